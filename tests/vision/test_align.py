"""Face alignment: keypoints -> the 150x150 chip, by a least-squares similarity transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from device.vision.align import (
    CHIP_SIZE,
    CHIP_TEMPLATE,
    AlignmentError,
    align_face,
    chip_matrix,
    similarity_transform,
)


def keypoints_for(matrix: NDArray[np.float64]) -> NDArray[np.float32]:
    """Image keypoints that a chip matrix maps exactly onto the template (ears filled with junk)."""
    inverse = cv2.invertAffineTransform(matrix)
    points = CHIP_TEMPLATE @ inverse[:, :2].T + inverse[:, 2]
    return np.vstack([points, [[-1e3, 5.0], [7.0, 1e3]]]).astype(np.float32)


def rotation_about(centre: tuple[float, float], degrees: float, scale: float) -> NDArray[np.float64]:
    return np.asarray(cv2.getRotationMatrix2D(centre, degrees, scale), dtype=np.float64)


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    rng = np.random.default_rng(3)
    source = rng.uniform(0, 500, size=(4, 2))
    truth = rotation_about((120.0, 80.0), 23.0, 0.4)
    target = source @ truth[:, :2].T + truth[:, 2]
    assert np.allclose(similarity_transform(source, target), truth, atol=1e-9)


def test_similarity_transform_never_mirrors() -> None:
    source = CHIP_TEMPLATE.copy()
    mirrored = source * [-1.0, 1.0]
    linear = similarity_transform(source, mirrored)[:, :2]
    assert np.linalg.det(linear) > 0


def test_ears_do_not_move_the_chip() -> None:
    truth = rotation_about((300.0, 200.0), -12.0, 0.6)
    keypoints = keypoints_for(truth)
    moved = keypoints.copy()
    moved[4:] += 250.0
    assert np.allclose(chip_matrix(keypoints), chip_matrix(moved))


def test_a_rotated_and_scaled_face_gives_the_same_chip(load_face) -> None:  # type: ignore[no-untyped-def]
    image = load_face("obama.jpg")
    upright = rotation_about((490.0, 270.0), 0.0, 0.55)
    upright[:, 2] += [CHIP_SIZE / 2 - 490.0, CHIP_SIZE / 2 - 270.0]
    chip = align_face(image, keypoints_for(upright))

    # The same photo turned by 30 degrees and enlarged: the keypoints move with it.
    turn = rotation_about((image.shape[1] / 2, image.shape[0] / 2), 30.0, 1.3)
    turned = cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC)
    keypoints = keypoints_for(upright)
    moved = keypoints[:, :2] @ turn[:, :2].T + turn[:, 2]
    chip_turned = align_face(turned, moved.astype(np.float32))
    difference = np.abs(chip.astype(np.float64) - chip_turned).mean()
    assert difference < 6.0
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8


def test_a_large_face_is_smoothed_not_aliased() -> None:
    # Fine stripes (period 2 px) averaged over a chip pixel cover ~8 image pixels: expect flat grey.
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255
    shrink = rotation_about((1000.0, 1000.0), 0.0, 1 / 8)
    shrink[:, 2] += CHIP_SIZE / 2 - 1000.0
    chip = align_face(stripes, keypoints_for(shrink))
    assert abs(float(chip.mean()) - 127.5) < 6.0
    assert float(chip.std()) < 12.0


def test_a_face_outside_the_image_gives_a_black_chip() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    far = rotation_about((0.0, 0.0), 0.0, 0.1)
    far[:, 2] += [-1e4, -1e4]
    assert not align_face(image, keypoints_for(far)).any()


@pytest.mark.parametrize(
    "keypoints",
    [np.zeros((6, 2), np.float32), np.full((6, 2), np.nan, np.float32), np.zeros((4, 2), np.float32)],
    ids=["collapsed", "not finite", "too few"],
)
def test_unusable_keypoints_are_an_alignment_error(keypoints: NDArray[np.float32]) -> None:
    with pytest.raises(AlignmentError):
        align_face(np.zeros((50, 50, 3), np.uint8), keypoints)


def test_a_grey_or_float_image_is_refused() -> None:
    keypoints = keypoints_for(rotation_about((10.0, 10.0), 0.0, 1.0))
    with pytest.raises(AlignmentError, match="RGB uint8"):
        align_face(np.zeros((50, 50), np.uint8), keypoints)
    with pytest.raises(AlignmentError, match="RGB uint8"):
        align_face(np.zeros((50, 50, 3), np.float32), keypoints)  # type: ignore[arg-type]
