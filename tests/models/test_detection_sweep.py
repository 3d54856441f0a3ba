"""The detection threshold table in models/README.md, reproduced at the shipped setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from embedder_support import MODELS_DIR

from device.config import DetectionSection
from device.evaluation.detection_sweep import SweepResult, detection_sweep
from device.unit.democlip import hallway

pytest.importorskip("skimage", reason="the face-free set is scikit-image's data (dev extra)")


@pytest.fixture(scope="module")
def sweeps(face_images: dict[str, Path]) -> dict[str, SweepResult]:
    entrance = {"entrance_640x480": hallway(640, 480), "entrance_1280x720": hallway(1280, 720)}
    return {variant: detection_sweep(MODELS_DIR, entrance, variant) for variant in ("float", "int8")}


def column(result: SweepResult, threshold: float) -> dict[str, int]:
    index = result.thresholds.index(threshold)
    row = {condition: missed[index] for condition, missed in result.missed.items()}
    row["false"] = result.false_detections[index]
    return row


def test_shipped_threshold_is_the_one_measured() -> None:
    assert DetectionSection().score_threshold == 0.55


def test_float_detector_at_the_shipped_threshold(sweeps: dict[str, SweepResult]) -> None:
    result = sweeps["float"]
    assert (result.faces, result.face_free_images) == (27, 66)
    assert column(result, 0.55) == {
        "original": 0,
        "grey": 6,
        "half_size": 0,
        "under_exposed": 1,
        "grey_under_exposed": 3,
        "false": 0,
    }
    # One step lower lets a false detection through; one step higher loses a colour face.
    assert column(result, 0.5)["false"] == 1 and column(result, 0.6)["original"] == 1


def test_int8_detector_at_the_shipped_threshold(sweeps: dict[str, SweepResult]) -> None:
    assert column(sweeps["int8"], 0.55) == {
        "original": 1,
        "grey": 6,
        "half_size": 0,
        "under_exposed": 1,
        "grey_under_exposed": 5,
        "false": 0,
    }
