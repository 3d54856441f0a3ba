"""Face verification figures by the LFW protocol: a threshold chosen on the other folds, judged on one.

Pure functions over similarity scores, so that ``device.evaluation.lfw`` (which produces the scores from
pictures) stays separate from the arithmetic, and the arithmetic can be checked on scores made up by hand.

- Accuracy: the threshold is the one with the best accuracy on the pairs of every other fold, and the
  accuracy is that threshold's on the held-out fold. The reported figure is the mean over folds.
- TAR at FAR f: the share of genuine pairs above the threshold that lets at most ``floor(f * impostors)``
  impostor pairs through. On 300 impostor pairs a FAR of 1e-3 admits none, so it is the share of genuine
  pairs above the highest impostor: as strict as the pairs can resolve, never looser than asked.
- A pair with a picture where no face was found counts as a rejection (similarity ``NO_FACE``): a missed
  face costs its genuine pairs and is never hidden by dropping pairs.

TAR is ``device.identity.verification``'s (what ``device compare --pairs`` reports); the threshold search
is not: that one sits on an observed score, which suits one set of pairs, not a held-out fold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from device.identity.verification import tar_at_far as genuine_acceptance

NO_FACE = -math.inf  # the similarity of a pair with a picture where no face was found
FARS = (1e-3, 1e-2)


@dataclass(frozen=True)
class FoldFigures:
    fold: int
    pairs: int
    threshold: float  # chosen on the other folds
    accuracy: float
    tar_at_far: dict[float, float]


@dataclass(frozen=True)
class ProtocolFigures:
    folds: list[FoldFigures]
    mean_accuracy: float
    tar_at_far: dict[float, float]  # over every pair of every fold at once
    best_accuracy: float  # at the one threshold that suits all pairs best (optimistic: fitted on them)


def best_threshold(similarities: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    """The threshold (accept at or above it) with the highest accuracy on these pairs: the middle of the
    best gap between two neighbouring scores, so that a held-out pair as close to the boundary as a
    training one falls on the same side (a threshold on a training genuine score rejects any held-out
    genuine pair just below it)."""
    finite = np.isfinite(similarities)
    values = np.unique(similarities[finite])
    if values.size == 0:
        raise ValueError("no pairs to choose a threshold on")
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1e-6]])
    genuine = np.sort(similarities[same])
    impostor = np.sort(similarities[~same])
    accepted_genuine = genuine.size - np.searchsorted(genuine, candidates, side="left")
    rejected_impostor = np.searchsorted(impostor, candidates, side="left")
    return float(candidates[int(np.argmax(accepted_genuine + rejected_impostor))])


def accuracy_at(similarities: NDArray[np.float64], same: NDArray[np.bool_], threshold: float) -> float:
    return float(np.mean((similarities >= threshold) == same))


def tar_at_far(similarities: NDArray[np.float64], same: NDArray[np.bool_], far: float) -> float:
    """Genuine acceptance at the strictest threshold that lets through at most ``far`` of the impostors."""
    value = genuine_acceptance(similarities[same], similarities[~same], far)
    if value is None:
        raise ValueError("no genuine pairs")
    return value


def protocol(
    similarities: NDArray[np.float64], same: NDArray[np.bool_], folds: NDArray[np.int64]
) -> ProtocolFigures:
    """Each fold judged with the threshold chosen on the others; TAR per fold and over all pairs."""
    fold_ids = sorted(int(fold) for fold in np.unique(folds))
    if len(fold_ids) < 2:
        raise ValueError("the protocol needs at least two folds (a threshold is chosen on the others)")
    figures = []
    for fold in fold_ids:
        held_out = folds == fold
        threshold = best_threshold(similarities[~held_out], same[~held_out])
        figures.append(
            FoldFigures(
                fold=fold,
                pairs=int(held_out.sum()),
                threshold=threshold,
                accuracy=accuracy_at(similarities[held_out], same[held_out], threshold),
                tar_at_far={far: tar_at_far(similarities[held_out], same[held_out], far) for far in FARS},
            )
        )
    return ProtocolFigures(
        folds=figures,
        mean_accuracy=float(np.mean([fold.accuracy for fold in figures])),
        tar_at_far={far: tar_at_far(similarities, same, far) for far in FARS},
        best_accuracy=accuracy_at(similarities, same, best_threshold(similarities, same)),
    )
