"""Calibration arithmetic on embeddings whose similarities are known, and the locally drawn plot."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.identity.calibrate import (
    CalibrationError,
    calibrate,
    collect_scores,
    draw_plot,
    format_table,
    genuine_scores,
    impostor_scores,
)


def vectors_at(similarities: list[float], seed: int = 0) -> np.ndarray:
    """Unit vectors whose cosine with the first basis vector e0 are exactly the given values."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in similarities:
        other = rng.normal(size=128)
        other[0] = 0.0
        other /= np.linalg.norm(other)
        row = np.zeros(128)
        row[0] = s
        rows.append(row + np.sqrt(1 - s * s) * other)
    return np.asarray(rows, np.float32)


E0 = np.eye(128, dtype=np.float32)[:1]


def test_genuine_scores_are_leave_one_out_best_matches_within_each_subject() -> None:
    alice = np.concatenate([E0, vectors_at([0.95, 0.90])])
    scores = genuine_scores({"alice": alice, "bob": vectors_at([0.1])})  # bob: one template, no pair
    assert len(scores) == 3
    assert scores[0] == pytest.approx(0.95, abs=1e-5)  # e0's best other template
    assert min(scores) >= 0.8


def test_impostor_scores_count_every_probe_against_every_subject() -> None:
    templates = {"alice": E0, "bob": vectors_at([0.2], seed=1)}
    strangers = vectors_at([0.97, 0.5, 0.3], seed=2)
    scores = impostor_scores(templates, strangers)
    assert len(scores) == (1 + 3) * 2  # (other subject's template + 3 strangers) x 2 subjects
    assert max(scores) == pytest.approx(0.97, abs=1e-5)


def test_far_frr_and_the_recommended_threshold() -> None:
    templates = {"alice": np.concatenate([E0, vectors_at([0.96, 0.94, 0.92])])}
    strangers = vectors_at([0.70, 0.80, 0.85, 0.905], seed=3)
    result = calibrate(collect_scores(templates, strangers), target_far=0.0)
    assert result.recommended == pytest.approx(0.91)  # just above the strongest stranger (0.905)
    row = result.row_at(0.91)
    assert row.far == 0.0
    assert row.frr == 0.0  # every template's best other template is at least 0.92-ish
    assert result.row_at(0.85).far == pytest.approx(0.5)  # 0.85 and 0.905 of 4 strangers
    assert result.row_at(0.999).frr == 1.0
    assert any("cannot show a FAR below" in note for note in result.notes)

    lenient = calibrate(collect_scores(templates, strangers), target_far=0.25)
    assert lenient.recommended == pytest.approx(0.855)  # one stranger of four may pass


def test_without_subjects_or_impostors_there_is_nothing_to_calibrate() -> None:
    with pytest.raises(CalibrationError, match="nobody is enrolled"):
        calibrate(collect_scores({}, vectors_at([0.5])), 0.001)
    with pytest.raises(CalibrationError, match="no impostor comparisons"):
        calibrate(collect_scores({"alice": E0}, np.zeros((0, 128), np.float32)), 0.001)


def test_the_table_marks_the_recommended_and_configured_thresholds() -> None:
    result = calibrate(collect_scores({"alice": E0}, vectors_at([0.6, 0.7], seed=4)), 0.0)
    lines = format_table(result, configured=0.93)
    assert lines[0].split() == ["threshold", "FAR", "FRR"]
    assert any(line.startswith("    0.930") and line.endswith("<- configured") for line in lines)
    # Two strangers cannot show FAR 0: nothing is called recommended.
    assert not any(line.endswith("<- recommended") for line in lines)
    assert any(line.endswith("<- meets the target here (too little data)") for line in lines)


def test_the_plot_is_drawn_locally_as_a_png_with_both_curves(tmp_path: Path) -> None:
    templates = {"alice": np.concatenate([E0, vectors_at([0.96, 0.94])])}
    result = calibrate(collect_scores(templates, vectors_at([0.6, 0.8, 0.9], seed=5)), 0.0)
    out = tmp_path / "plots" / "far_frr.png"
    draw_plot(result, 0.93, out)
    image = cv2.imread(str(out))
    assert image is not None and image.shape == (460, 720, 3)
    red = np.all(image == (40, 40, 210), axis=2).sum()
    blue = np.all(image == (200, 90, 20), axis=2).sum()
    assert red > 100 and blue > 100  # both curves are drawn, not just the frame
