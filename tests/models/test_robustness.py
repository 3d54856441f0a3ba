"""``device models eval --robustness``: every condition reported for both pipelines, with real figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from embedder_support import MODELS_DIR

from device.cli import main
from device.evaluation.robustness import conditions, jpeg, pair_figures

CONDITIONS = {"original", "grey", "face_40px", "jpeg_q30", "blur", "under_exposed", "over_exposed"}


def test_degradations_do_what_they_say() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(40, 200, (200, 300, 3), dtype=np.uint8)
    made = {name: transform(image) for name, transform in conditions(face_width=100.0).items()}
    assert set(made) == CONDITIONS
    assert np.array_equal(made["original"], image)
    assert np.all(made["grey"][:, :, 0] == made["grey"][:, :, 2])
    assert made["face_40px"].shape[:2] == (80, 120)  # 40 / 100 of the size
    assert made["under_exposed"].mean() < 0.4 * image.mean() < made["over_exposed"].mean()
    assert made["blur"].std() < image.std()
    assert 0 < np.abs(jpeg(image).astype(int) - image).mean() < 40


def test_pair_figures_leave_out_pictures_without_a_face() -> None:
    unit = np.eye(128, dtype=np.float32)
    vectors = {
        "obama.jpg": unit[0],
        "obama2.jpg": unit[0],
        "obama3.jpg": None,
        "biden.jpg": unit[1],
        **{f"sample{i}.jpg": unit[1 + i] for i in range(1, 7)},
    }
    figures = pair_figures(vectors)
    assert figures == {"found_rate": 0.9, "genuine_min": 1.0, "impostor_max": 0.0, "margin": 1.0}
    assert pair_figures({**vectors, "obama2.jpg": None})["margin"] is None  # no genuine pair left


@pytest.mark.oracle
@pytest.mark.slow
def test_robustness_eval_reports_every_condition_for_us_and_dlib(
    face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("dlib")
    assert main(["models", "eval", "--robustness", "--json", "--models-dir", str(MODELS_DIR)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["robustness"]) == CONDITIONS and "yaw_30" in report["robustness_unavailable"]
    for systems in report["robustness"].values():
        assert set(systems) == {"ours", "dlib"}
        for figures in systems.values():
            assert 0.0 <= figures["found_rate"] <= 1.0
    original = report["robustness"]["original"]
    assert original["ours"]["found_rate"] == original["dlib"]["found_rate"] == 1.0
    # Aligned like dlib, our margin on the undegraded photos is dlib's to within 0.01.
    assert abs(original["ours"]["margin"] - original["dlib"]["margin"]) < 0.01
    for condition in ("grey", "jpeg_q30", "blur", "under_exposed", "over_exposed"):
        assert report["robustness"][condition]["ours"]["margin"] > 0.05, condition
