"""Face verification figures by the LFW protocol: a threshold chosen on the other folds, judged on one.

Pure functions over similarity scores, so that ``device.evaluation.lfw`` (which produces the scores from
pictures) stays separate from the arithmetic, and the arithmetic can be checked on scores made up by hand.

- Accuracy: the threshold is the one with the best accuracy on the pairs of every other fold (the middle of
  the best interval between two neighbouring scores, so that it does not sit on a training score), and the
  accuracy is that threshold's on the held-out fold. The reported figure is the mean over folds.
- TAR at FAR f: the share of genuine pairs above the threshold that lets at most ``floor(f * impostors)``
  impostor pairs through. On 300 impostor pairs a FAR of 1e-3 admits none, so it is the share of genuine
  pairs above the highest impostor: as strict as the pairs can resolve, never looser than asked.
- A pair with a picture where no face was found counts as a rejection (similarity ``NO_FACE``): a missed
  face costs its genuine pairs and is never hidden by dropping pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

NO_FACE = -1.0  # the similarity of a pair with a picture where no face was found: below every real one
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
    """The threshold (accept at or above it) with the highest accuracy on these pairs."""
    if similarities.size == 0:
        raise ValueError("no pairs to choose a threshold on")
    values = np.unique(similarities)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1e-6]])
    order = np.argsort(similarities, kind="stable")
    ranked_same = same[order]
    ranked = similarities[order]
    # Accepted genuine and impostor pairs for each candidate, from cumulative counts (no loop over pairs).
    below = np.searchsorted(ranked, candidates, side="left")
    genuine_below = np.concatenate([[0], np.cumsum(ranked_same)])[below]
    impostor_below = np.concatenate([[0], np.cumsum(~ranked_same)])[below]
    correct = impostor_below + (int(ranked_same.sum()) - genuine_below)
    return float(candidates[int(np.argmax(correct))])


def accuracy_at(similarities: NDArray[np.float64], same: NDArray[np.bool_], threshold: float) -> float:
    return float(np.mean((similarities >= threshold) == same))


def tar_at_far(similarities: NDArray[np.float64], same: NDArray[np.bool_], far: float) -> float:
    """Genuine acceptance at the strictest threshold that lets through at most ``far`` of the impostors."""
    impostors = np.sort(similarities[~same])[::-1]
    genuine = similarities[same]
    if genuine.size == 0:
        raise ValueError("no genuine pairs")
    allowed = math.floor(far * impostors.size + 1e-9)
    if allowed >= impostors.size:
        return 1.0
    return float(np.mean(genuine > impostors[allowed]))


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
