"""The quality gate on a real photo (hand-labelled face box) and on degraded copies of it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.config import QualitySection
from device.types import Box, Detection
from device.vision.quality import BestSamples, QualityReason, assess, estimate_yaw_deg

# obama.jpg (910x1137), labelled by hand: face box and the six BlazeFace-order keypoints.
OBAMA_BOX = Box(370, 130, 620, 390)
OBAMA_KEYPOINTS = np.array(
    [[440, 215], [545, 215], [492, 275], [495, 325], [355, 245], [625, 245]], np.float32
)


@pytest.fixture
def obama(load_face) -> np.ndarray:  # type: ignore[no-untyped-def]
    image: np.ndarray = load_face("obama.jpg")
    return image


def labelled(scale: float = 1.0, shift: tuple[float, float] = (0, 0), score: float = 0.9) -> Detection:
    box = OBAMA_BOX
    dx, dy = shift
    return Detection(
        Box(box.x0 * scale + dx, box.y0 * scale + dy, box.x1 * scale + dx, box.y1 * scale + dy),
        score,
        (OBAMA_KEYPOINTS * scale + np.array([dx, dy], np.float32)).astype(np.float32),
    )


def test_a_sharp_frontal_well_lit_face_is_accepted(obama: np.ndarray) -> None:
    report = assess(obama, labelled(), QualitySection())
    assert report.accepted, report.reasons
    assert 0.5 < report.score <= 1.0
    assert abs(report.yaw_deg) < 10


def test_a_blurred_face_is_rejected_as_blurred(obama: np.ndarray) -> None:
    report = assess(cv2.GaussianBlur(obama, (0, 0), 6), labelled(), QualitySection())
    assert report.reasons == (QualityReason.BLURRED,)
    assert report.score == 0.0


def test_a_dark_and_an_overexposed_face_are_rejected(obama: np.ndarray) -> None:
    dark = (obama * 0.2).astype(np.uint8)
    bright = np.clip(obama.astype(np.int16) + 140, 0, 255).astype(np.uint8)
    assert QualityReason.TOO_DARK in assess(dark, labelled(), QualitySection()).reasons
    assert QualityReason.TOO_BRIGHT in assess(bright, labelled(), QualitySection()).reasons


def test_a_small_face_is_rejected_as_too_small(obama: np.ndarray) -> None:
    scale = 0.2
    small = cv2.resize(obama, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    report = assess(small, labelled(scale), QualitySection())
    assert QualityReason.TOO_SMALL in report.reasons


def test_a_face_half_outside_the_frame_is_cut_off(obama: np.ndarray) -> None:
    report = assess(obama, labelled(shift=(-500, 0)), QualitySection())
    assert QualityReason.CUT_OFF in report.reasons


def test_yaw_follows_the_nose_between_the_ears() -> None:
    frontal = OBAMA_KEYPOINTS.copy()
    turned = OBAMA_KEYPOINTS.copy()
    turned[2, 0] = 600  # nose tip near the left ear: a strong turn
    assert abs(estimate_yaw_deg(frontal)) < 5
    assert estimate_yaw_deg(turned) > QualitySection().max_yaw_deg
    mirrored = OBAMA_KEYPOINTS.copy()
    mirrored[2, 0] = 380
    assert estimate_yaw_deg(mirrored) < -QualitySection().max_yaw_deg


def test_a_turned_face_is_rejected(obama: np.ndarray) -> None:
    detection = labelled()
    keypoints = detection.keypoints.copy()
    keypoints[2, 0] = 600
    report = assess(obama, Detection(detection.box, detection.score, keypoints), QualitySection())
    assert report.reasons == (QualityReason.TURNED_AWAY,)


def test_best_samples_keeps_the_k_best_and_tallies_rejections() -> None:
    best: BestSamples[str] = BestSamples(k=3)
    for score, name in [(0.2, "a"), (0.9, "b"), (0.5, "c"), (0.1, "d"), (0.7, "e")]:
        best.offer(score, name)
    best.reject(["blurred"])
    best.reject(["blurred", "too_dark"])
    assert best.best() == ["b", "e", "c"]
    assert best.top_reasons() == ("blurred", "too_dark")
    assert best.seen == 7
