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
    look_alike_subjects,
    plot_marks,
    recommendation_lines,
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


GREEN = (40, 150, 40)
AMBER = (0, 140, 230)


def column_has(image: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(image == colour, axis=2).any())


def test_the_plot_says_what_the_text_says_about_the_recommendation(tmp_path: Path) -> None:
    templates = {"alice": np.concatenate([E0, vectors_at([0.96, 0.94])])}
    few = calibrate(collect_scores(templates, vectors_at([0.6, 0.8], seed=6)), 0.001)
    many = calibrate(collect_scores(templates, vectors_at([0.3] * 4000, seed=7)), 0.001)
    for result, recommends in ((few, False), (many, True)):
        text = recommendation_lines(result, 0.93)
        assert any(line.startswith("recommended threshold") for line in text) is recommends
        labels = [mark.label for mark in plot_marks(result, 0.93)]
        assert any(label.startswith("recommended") for label in labels) is recommends
        out = tmp_path / f"{recommends}.png"
        draw_plot(result, 0.93, out)
        image = cv2.imread(str(out))
        # green is the colour of a recommendation; amber of a threshold met on too little data
        assert column_has(image, GREEN) is recommends
        assert column_has(image, AMBER) is not recommends


def test_two_subjects_that_match_each_other_are_found_with_their_similarity() -> None:
    ada = np.concatenate([E0, vectors_at([0.95], seed=8)])
    templates = {
        "s-ada": ada,
        "s-ada-again": vectors_at([0.97], seed=9),  # the same face enrolled a second time
        "s-bob": vectors_at([0.2], seed=10),
    }
    (pair,) = look_alike_subjects(templates, threshold=0.92)
    assert (pair.first, pair.second) == ("s-ada", "s-ada-again")
    assert pair.similarity == pytest.approx(0.97, abs=1e-5)
    assert look_alike_subjects(templates, threshold=0.98) == []
