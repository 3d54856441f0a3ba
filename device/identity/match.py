"""Matching embeddings against the enrolled set: vectorised cosine similarity, best subject and margin.

Embeddings and templates are L2-normalised, so cosine similarity is one matrix product. A subject may have
several templates; a subject's similarity is its best template's. The margin is the best subject's
similarity minus the best *other* subject's: a face that is close to two residents is ambiguous even when
both similarities are high. With no other subject enrolled there is nothing to be ambiguous with, so the
margin is None (reported as null), not a figure against an imaginary competitor.

``TemplateIndex`` groups the templates by subject once (per gallery version), so a lookup is a matmul and a
``reduceat``: 10,000 templates take well under a millisecond (``device bench`` measures it).
A track is matched on up to N samples: per subject, the mean over samples of its best-template similarity.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from device.types import Match, Vector

EMBEDDING_DIM = 128
NO_COMPETITOR = -1.0
NORM_TOLERANCE = 1e-3


class GalleryView(Protocol):
    """What the pipeline needs from the enrolled set; the gallery store implements it."""

    @property
    def version(self) -> str:
        """Changes whenever a subject is enrolled, forgotten or expires."""
        ...

    def templates(self) -> tuple[NDArray[np.float32], list[str]]:
        """(N, 128) float32 L2-normalised rows and the subject id of each row."""
        ...


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    normalised: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


def _as_rows(vectors: NDArray[np.float32], what: str) -> NDArray[np.float32]:
    rows = np.asarray(vectors, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"{what} must have shape (N, {EMBEDDING_DIM}), got {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(rows, axis=1)
    if rows.shape[0] and np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
        raise ValueError(f"{what} must be L2-normalised (norms {norms.min():.4f}..{norms.max():.4f})")
    return np.ascontiguousarray(rows)


@dataclass(frozen=True)
class SubjectScores:
    """Per-subject similarity for one query (already aggregated over samples)."""

    subjects: tuple[str, ...]
    similarity: NDArray[np.float32]  # (n_subjects,)

    def best(self, among: str | None = None) -> Match:
        """The best subject (or the claimed one, ``among``) and its margin to the best other subject."""
        if not self.subjects:
            return Match(subject_id=None, similarity=NO_COMPETITOR, margin=None)
        if among is None:
            index = int(np.argmax(self.similarity))
        elif among in self.subjects:
            index = self.subjects.index(among)
        else:
            return Match(subject_id=None, similarity=NO_COMPETITOR, margin=None)
        best = float(self.similarity[index])
        if len(self.subjects) == 1:
            return Match(subject_id=self.subjects[index], similarity=best, margin=None)
        other = float(np.delete(self.similarity, index).max())
        return Match(subject_id=self.subjects[index], similarity=best, margin=best - other)


class TemplateIndex:
    """Templates grouped by subject for fast per-subject maxima."""

    def __init__(self, templates: NDArray[np.float32], subject_ids: Sequence[str]) -> None:
        rows = _as_rows(templates, "templates")
        if len(subject_ids) != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} templates but {len(subject_ids)} subject ids")
        subjects, codes = np.unique(np.asarray(list(subject_ids), dtype=object), return_inverse=True)
        order = np.argsort(codes, kind="stable")
        self.templates: NDArray[np.float32] = np.ascontiguousarray(rows[order])
        # (128, N) in memory order: BLAS multiplies a contiguous right-hand side ~10x faster than the
        # transposed view of (N, 128) (measured 0.6 ms against 8-16 ms for 10,000 templates).
        self._columns: NDArray[np.float32] = np.ascontiguousarray(self.templates.T)
        self.subjects: tuple[str, ...] = tuple(str(subject) for subject in subjects)
        sorted_codes = codes[order]
        self._starts = (
            np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(order) else order
        )

    def __len__(self) -> int:
        return int(self.templates.shape[0])

    def scores(self, vectors: NDArray[np.float32]) -> SubjectScores:
        """Per subject: best-template cosine for each sample, averaged over the samples."""
        queries = _as_rows(vectors, "embeddings")
        if len(self) == 0 or queries.shape[0] == 0:
            return SubjectScores((), np.zeros(0, np.float32))
        similarity = queries @ self._columns  # (S, N)
        per_subject = np.maximum.reduceat(similarity, self._starts, axis=1)  # (S, n_subjects)
        return SubjectScores(self.subjects, per_subject.mean(axis=0, dtype=np.float32))

    def match(self, vectors: NDArray[np.float32], claim: str | None = None) -> Match:
        return self.scores(vectors).best(among=claim)


def match_embedding(templates: NDArray[np.float32], subject_ids: Sequence[str], vector: Vector) -> Match:
    """One embedding against a template set: best subject, similarity, margin to the best other subject."""
    return TemplateIndex(templates, subject_ids).match(vector)


def match_samples(
    templates: NDArray[np.float32], subject_ids: Sequence[str], vectors: NDArray[np.float32]
) -> Match:
    """A track's samples (S, 128) aggregated: per subject the mean of its best-template similarities."""
    return TemplateIndex(templates, subject_ids).match(vectors)


class CachedIndex:
    """Rebuilds the ``TemplateIndex`` only when the gallery's version changes (enrol/forget/expiry)."""

    def __init__(self, gallery: GalleryView) -> None:
        self._gallery = gallery
        self._version: str | None = None
        self._index = TemplateIndex(np.zeros((0, EMBEDDING_DIM), np.float32), [])

    def current(self) -> tuple[TemplateIndex, str]:
        version = self._gallery.version
        if version != self._version:
            templates, subject_ids = self._gallery.templates()
            self._index = TemplateIndex(templates, subject_ids)
            self._version = version
        return self._index, version


class InMemoryGallery:
    """A ``GalleryView`` held in memory only: for demos and tests (the unit uses the encrypted store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_subject: dict[str, NDArray[np.float32]] = {}
        self._generation = 0

    @property
    def version(self) -> str:
        with self._lock:
            return f"memory-{self._generation}"

    def enrol(self, subject_id: str, vectors: NDArray[np.float32]) -> None:
        rows = _as_rows(l2_normalise(np.asarray(vectors, dtype=np.float32)), "templates")
        if rows.shape[0] == 0:
            raise ValueError("enrolment needs at least one template")
        with self._lock:
            self._by_subject[subject_id] = rows.copy()
            self._generation += 1

    def forget(self, subject_id: str) -> bool:
        with self._lock:
            removed = self._by_subject.pop(subject_id, None) is not None
            if removed:
                self._generation += 1
            return removed

    def templates(self) -> tuple[NDArray[np.float32], list[str]]:
        with self._lock:
            if not self._by_subject:
                return np.zeros((0, EMBEDDING_DIM), np.float32), []
            rows = np.concatenate(list(self._by_subject.values()))
            ids = [subject for subject, vectors in self._by_subject.items() for _ in range(len(vectors))]
            return rows, ids

    @property
    def subjects(self) -> list[str]:
        with self._lock:
            return list(self._by_subject)
