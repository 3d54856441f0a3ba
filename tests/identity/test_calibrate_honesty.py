"""`calibrate` recommends only what its data supports (issue 17): with n impostor comparisons and no
false accept, FAR is only known to be below 3/n (95%); a smaller target gets "keep the default"."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from device.commands.calibrate import recommendation_lines
from device.identity.calibrate import ComparisonScores, calibrate


def scores(genuine: int, impostor: int) -> ComparisonScores:
    rng = np.random.default_rng(0)
    g: NDArray[np.float32] = rng.uniform(0.94, 0.99, genuine).astype(np.float32)
    i: NDArray[np.float32] = rng.uniform(0.2, 0.85, impostor).astype(np.float32)
    return ComparisonScores(genuine=g, impostor=i, subjects=3, subjects_with_pairs=3, strangers=impostor)


def test_too_few_comparisons_for_the_target_recommend_nothing() -> None:
    result = calibrate(scores(30, 54), target_far=0.001)
    assert not result.supports_target
    assert abs(result.achievable_far - 3 / 54) < 1e-12
    lines = recommendation_lines(result, configured=0.92)
    assert lines[0].startswith("achievable FAR with this data: 0.056 (54 impostor comparisons")
    assert "not enough comparisons for FAR 0.001; keep the default (configured: 0.920)" in lines[1]
    assert "about 3000 impostor comparisons" in lines[1]
    assert not any("recommended threshold" in line for line in lines)
    assert result.as_json(0.92)["supports_target"] is False


def test_enough_comparisons_give_a_recommendation() -> None:
    result = calibrate(scores(30, 4000), target_far=0.001)
    assert result.supports_target
    lines = recommendation_lines(result, configured=0.92)
    assert lines[-1].startswith(f"recommended threshold {result.recommended:.3f} for FAR <= 0.001")
