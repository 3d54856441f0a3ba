from __future__ import annotations

import cv2
import numpy as np

from device.config import MotionSection
from device.vision.motion import MotionGate


def with_sensor_noise(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 3, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def test_a_still_scene_with_sensor_noise_is_not_motion(load_face) -> None:  # type: ignore[no-untyped-def]
    scene = cv2.resize(load_face("obama.jpg"), (640, 480))
    gate = MotionGate(MotionSection())
    assert gate.update(with_sensor_noise(scene, 0)).moved  # the first frame has nothing to compare with
    results = [gate.update(with_sensor_noise(scene, seed)) for seed in range(1, 10)]
    assert not any(result.moved for result in results)
    assert max(result.changed_fraction for result in results) < MotionSection().min_changed_fraction


def test_a_face_entering_the_scene_is_motion(load_face) -> None:  # type: ignore[no-untyped-def]
    background = np.full((480, 640, 3), 90, np.uint8)
    face = cv2.resize(load_face("biden.jpg"), (80, 180))
    gate = MotionGate(MotionSection())
    gate.update(background)
    moved = []
    for x in (0, 40, 80):
        frame = background.copy()
        frame[100:280, x : x + 80] = face
        moved.append(gate.update(frame).moved)
    assert moved == [True, True, True]


def test_a_disabled_gate_lets_every_frame_through() -> None:
    gate = MotionGate(MotionSection(enabled=False))
    still = np.zeros((48, 64, 3), np.uint8)
    assert all(gate.update(still).moved for _ in range(3))
