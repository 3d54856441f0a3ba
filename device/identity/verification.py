"""Verification figures from labelled pairs: TAR at a FAR, best accuracy, accuracy at a threshold.

A pair is (similarity, same): ``same`` says whether both pictures show one person. A pair where either
picture had no face has similarity None: it can be neither accepted nor rejected by a threshold, so it
counts as *not accepted* (a missed genuine pair, a correctly rejected impostor pair), the way a camera that
finds no face recognises nobody, and ``pairs_without_face`` says how many there were.

TAR at FAR ``f`` with ``n`` impostor pairs: at most ``floor(f * n)`` impostor pairs may be accepted, so the
threshold sits just above the ``floor(f * n) + 1``-th highest impostor similarity and a pair is accepted
when its similarity is strictly above it. With fewer than ``1 / f`` impostor pairs that allows none, and
the figure is really "TAR with no false accept"; ``impostor_pairs`` is reported so a reader can tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FAR_TARGETS = {"1e-2": 1e-2, "1e-3": 1e-3}  # key suffix -> FAR


@dataclass(frozen=True)
class LabelledPair:
    similarity: float | None
    same: bool


def _scores(pairs: Sequence[LabelledPair], same: bool) -> np.ndarray:
    return np.array(
        [-math.inf if pair.similarity is None else pair.similarity for pair in pairs if pair.same == same],
        dtype=np.float64,
    )


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float | None:
    """Share of genuine pairs accepted at the lowest threshold whose FAR is at most ``far``."""
    if genuine.size == 0:
        return None
    if impostor.size == 0:
        return float(np.mean(genuine > -math.inf))
    allowed = math.floor(far * impostor.size)
    if allowed >= impostor.size:
        return float(np.mean(genuine > -math.inf))
    bar = float(np.sort(impostor)[::-1][allowed])
    return float(np.mean(genuine > bar))


def best_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float | None]:
    """(best share of pairs decided right by one threshold "accept when >= t", that t)."""
    total = genuine.size + impostor.size
    if total == 0:
        return 0.0, None
    candidates = np.unique(np.concatenate([genuine, impostor]))
    candidates = candidates[np.isfinite(candidates)]
    # Accept nobody (every impostor right) is the baseline; then each observed similarity as threshold.
    best, best_threshold = impostor.size / total, None
    genuine_sorted, impostor_sorted = np.sort(genuine), np.sort(impostor)
    for threshold in candidates:
        accepted_genuine = genuine.size - np.searchsorted(genuine_sorted, threshold, side="left")
        rejected_impostor = np.searchsorted(impostor_sorted, threshold, side="left")
        accuracy = (accepted_genuine + rejected_impostor) / total
        if accuracy > best:
            best, best_threshold = float(accuracy), float(threshold)
    return float(best), best_threshold


def verification_summary(pairs: Sequence[LabelledPair], threshold: float) -> dict[str, float | int | None]:
    """The summary ``device compare --pairs`` prints when the CSV has a ``same`` column."""
    genuine, impostor = _scores(pairs, True), _scores(pairs, False)
    accuracy, accuracy_threshold = best_accuracy(genuine, impostor)
    right_at_threshold = int(np.sum(genuine >= threshold) + np.sum(impostor < threshold))
    summary: dict[str, float | int | None] = {
        "pairs": len(pairs),
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "pairs_without_face": sum(1 for pair in pairs if pair.similarity is None),
    }
    for name, far in FAR_TARGETS.items():
        value = tar_at_far(genuine, impostor, far)
        summary[f"tar_at_far_{name}"] = None if value is None else round(value, 4)
    summary["best_accuracy"] = round(accuracy, 4)
    summary["best_accuracy_threshold"] = None if accuracy_threshold is None else round(accuracy_threshold, 4)
    summary["threshold"] = threshold
    summary["accuracy_at_threshold"] = round(right_at_threshold / len(pairs), 4) if pairs else None
    return summary
