"""TAR at FAR and best accuracy from labelled pairs, checked against figures worked out by hand."""

from __future__ import annotations

import pytest

from device.identity.verification import LabelledPair, verification_summary


def pairs(genuine: list[float | None], impostor: list[float | None]) -> list[LabelledPair]:
    return [LabelledPair(s, True) for s in genuine] + [LabelledPair(s, False) for s in impostor]


def test_tar_at_far_allows_the_stated_share_of_impostors_and_no_more() -> None:
    # 200 impostors: FAR 1e-2 allows 2 accepted, so the bar is the 3rd highest impostor (0.80);
    # FAR 1e-3 allows none, so the bar is the highest impostor (0.95).
    impostor = [0.95, 0.90, 0.80] + [0.1] * 197
    genuine = [0.99, 0.96, 0.85, 0.81, 0.80, 0.5]
    summary = verification_summary(pairs(genuine, impostor), threshold=0.9)
    assert summary["tar_at_far_1e-2"] == pytest.approx(4 / 6, abs=1e-4)  # strictly above 0.80
    assert summary["tar_at_far_1e-3"] == pytest.approx(2 / 6, abs=1e-4)
    assert (summary["genuine_pairs"], summary["impostor_pairs"], summary["pairs"]) == (6, 200, 206)


def test_best_accuracy_finds_the_threshold_that_splits_best() -> None:
    genuine, impostor = [0.9, 0.8, 0.7, 0.3], [0.6, 0.5, 0.75]
    summary = verification_summary(pairs(genuine, impostor), threshold=0.85)
    # Accept >= 0.7: 3 genuine right, 0.75 wrongly accepted, 0.3 missed -> 5 of 7.
    assert summary["best_accuracy"] == pytest.approx(5 / 7, abs=1e-4)
    assert summary["best_accuracy_threshold"] == pytest.approx(0.7)
    # At 0.85: 0.9 accepted, 3 genuine missed, 3 impostors rejected -> 4 of 7.
    assert summary["accuracy_at_threshold"] == pytest.approx(4 / 7, abs=1e-4)


def test_a_pair_without_a_face_is_never_accepted() -> None:
    summary = verification_summary(pairs([0.9, None], [None, 0.2]), threshold=0.5)
    assert summary["pairs_without_face"] == 2
    assert summary["tar_at_far_1e-2"] == 0.5  # the faceless genuine pair is a miss
    assert summary["best_accuracy"] == 1.0 - 1 / 4  # only the faceless genuine pair is wrong
    assert summary["accuracy_at_threshold"] == 0.75


def test_only_impostor_pairs_has_no_tar() -> None:
    summary = verification_summary(pairs([], [0.3, 0.4]), threshold=0.5)
    assert summary["tar_at_far_1e-2"] is None and summary["best_accuracy"] == 1.0
