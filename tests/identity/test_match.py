"""Matching: best subject, margin to the best other subject, aggregation, the gallery seam."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.identity.match import (
    CachedIndex,
    InMemoryGallery,
    TemplateIndex,
    l2_normalise,
    match_embedding,
    match_samples,
)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(count, 128)).astype(np.float32))


def near(vector: np.ndarray, noise: float, seed: int) -> np.ndarray:
    jitter = np.random.default_rng(seed).normal(scale=noise, size=vector.shape).astype(np.float32)
    return l2_normalise((vector + jitter)[None, :])[0]


def test_best_subject_similarity_and_margin_to_the_best_other_subject() -> None:
    alice, bob, carol = unit_vectors(3, seed=1)
    templates = np.stack([alice, near(alice, 0.02, 2), bob, carol])
    ids = ["alice", "alice", "bob", "carol"]
    query = near(alice, 0.01, 3)
    result = match_embedding(templates, ids, query)
    similarities = templates @ query
    assert result.subject_id == "alice"
    assert result.similarity == pytest.approx(float(similarities[:2].max()), abs=1e-6)
    # The margin is to the best OTHER subject, never to alice's own second template.
    assert result.margin == pytest.approx(result.similarity - float(similarities[2:].max()), abs=1e-6)


def test_a_single_subject_has_no_competitor() -> None:
    (alice,) = unit_vectors(1, seed=4)
    result = match_embedding(alice[None, :], ["alice"], alice)
    assert result.subject_id == "alice"
    # Nothing to be confused with: no margin (null in events), not a figure against an imaginary -1.
    assert result.margin is None


def test_an_empty_gallery_matches_nobody() -> None:
    result = match_embedding(np.zeros((0, 128), np.float32), [], unit_vectors(1, 5)[0])
    assert result.subject_id is None


def test_samples_are_aggregated_per_subject() -> None:
    alice, bob = unit_vectors(2, seed=6)
    templates = np.stack([alice, bob])
    # One odd sample looks like bob; the other four look like alice: the track is alice.
    samples = np.stack([near(alice, 0.03, s) for s in range(4)] + [near(bob, 0.01, 9)])
    assert match_samples(templates, ["alice", "bob"], samples).subject_id == "alice"


def test_a_claim_scores_only_the_claimed_subject() -> None:
    alice, bob = unit_vectors(2, seed=7)
    index = TemplateIndex(np.stack([alice, bob]), ["alice", "bob"])
    claimed = index.match(near(alice, 0.01, 1), claim="bob")
    assert claimed.subject_id == "bob"
    assert claimed.similarity < 0.5
    assert index.match(alice, claim="mallory").subject_id is None


def test_unnormalised_or_malformed_input_is_refused() -> None:
    with pytest.raises(ValueError, match="L2-normalised"):
        TemplateIndex(np.ones((2, 128), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        TemplateIndex(np.ones((2, 64), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="subject ids"):
        TemplateIndex(unit_vectors(2, 1), ["a"])


@settings(max_examples=40, deadline=None)
@given(
    subjects=st.lists(st.integers(0, 6), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
    samples=st.integers(1, 5),
)
def test_vectorised_matching_agrees_with_a_plain_loop(subjects: list[int], seed: int, samples: int) -> None:
    templates = unit_vectors(len(subjects), seed)
    ids = [f"s{subject}" for subject in subjects]
    queries = unit_vectors(samples, seed + 1)
    per_subject: dict[str, list[float]] = {}
    for subject in sorted(set(ids)):
        rows = templates[[i for i, sid in enumerate(ids) if sid == subject]]
        per_subject[subject] = [float((rows @ q).max()) for q in queries]
    means = {subject: float(np.mean(values)) for subject, values in per_subject.items()}
    best = max(means, key=lambda subject: means[subject])
    others = [value for subject, value in means.items() if subject != best]
    result = match_samples(templates, ids, queries)
    assert result.similarity == pytest.approx(means[best], abs=1e-5)
    if others:
        assert result.margin == pytest.approx(means[best] - max(others), abs=1e-5)
    else:
        assert result.margin is None


def test_the_cached_index_follows_gallery_changes() -> None:
    alice, bob = unit_vectors(2, seed=8)
    gallery = InMemoryGallery()
    cache = CachedIndex(gallery)
    assert len(cache.current()[0]) == 0
    gallery.enrol("alice", alice[None, :])
    index, version = cache.current()
    assert index.subjects == ("alice",)
    gallery.enrol("bob", np.stack([bob, near(bob, 0.02, 1)]))
    index, newer = cache.current()
    assert newer != version and len(index) == 3
    assert gallery.forget("alice")
    assert cache.current()[0].subjects == ("bob",)
