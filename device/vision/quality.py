"""Quality gate: is this face good enough to embed, and how good compared to the track's other frames?

Measured on the detection's box in the full frame (before alignment, so a bad crop is rejected before any
model runs):
- size: the shorter side of the face box in pixels;
- sharpness: variance of the Laplacian of the grey face, resampled to a fixed size first so that the
  number means the same for a small and a large face;
- pose: yaw estimated from the keypoints (see ``estimate_yaw_deg``) and roll from the eye line;
- exposure: mean grey level of the inner face (the box without its border, where background shows);
- cut-off: how much of the box lies outside the frame.

A face with any reason is rejected; accepted faces get a score in (0, 1] used to keep the best K per track.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import QualitySection
from device.types import Detection, Keypoint, RgbImage

SHARPNESS_SIDE_PX = 96  # faces are resampled to this square before measuring blur
INNER_FACE = 0.2  # fraction of the box trimmed on each side for the exposure measurement
MAX_OUTSIDE_FRACTION = 0.15

KP = {name: index for index, name in enumerate(Keypoint)}


class QualityReason(StrEnum):
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    TURNED_AWAY = "turned_away"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    CUT_OFF = "cut_off"


@dataclass(frozen=True)
class QualityReport:
    size_px: float
    sharpness: float
    yaw_deg: float
    roll_deg: float
    brightness: float
    outside_fraction: float
    score: float  # 0 when rejected, else (0, 1]: higher is better
    reasons: tuple[QualityReason, ...]

    @property
    def accepted(self) -> bool:
        return not self.reasons


def estimate_yaw_deg(keypoints: np.ndarray) -> float:
    """Left/right head turn from where the nose tip sits between the two ear points.

    Facing the camera, the nose tip is halfway between the ears; turned by ``yaw`` the horizontal nose-to-
    ear distances become ``E cos(yaw) ± N sin(yaw)`` (E: half the ear distance, N: nose depth), so their
    normalised difference is ``(N/E) tan(yaw)``. For adult heads N/E is close to 1, hence ``atan``.
    Positive means the nose points towards the image's right. When BlazeFace's ear points collapse (profile
    views), the nose's offset from the eye midpoint against the eye distance is used the same way.
    """
    nose_x = float(keypoints[KP[Keypoint.NOSE_TIP], 0])
    right_ear_x = float(keypoints[KP[Keypoint.RIGHT_EAR], 0])
    left_ear_x = float(keypoints[KP[Keypoint.LEFT_EAR], 0])
    span = abs(left_ear_x - right_ear_x)
    if span > 1.0:
        centre = (left_ear_x + right_ear_x) / 2.0
        ratio = (nose_x - centre) / (span / 2.0)
    else:
        right_eye = keypoints[KP[Keypoint.RIGHT_EYE]]
        left_eye = keypoints[KP[Keypoint.LEFT_EYE]]
        eye_span = max(1.0, abs(float(left_eye[0] - right_eye[0])))
        ratio = (nose_x - float(right_eye[0] + left_eye[0]) / 2.0) / (eye_span / 2.0)
    return math.degrees(math.atan(ratio))


def estimate_roll_deg(keypoints: np.ndarray) -> float:
    """In-plane tilt of the eye line (alignment removes it; reported for diagnosis)."""
    right_eye = keypoints[KP[Keypoint.RIGHT_EYE]]
    left_eye = keypoints[KP[Keypoint.LEFT_EYE]]
    return math.degrees(math.atan2(float(left_eye[1] - right_eye[1]), float(left_eye[0] - right_eye[0])))


def crop_bounds(
    shape: tuple[int, ...], detection: Detection, trim: float = 0.0
) -> tuple[int, int, int, int, float]:
    """The box (trimmed by ``trim`` per side) clipped to the frame: x0, y0, x1, y1 (x1 >= x0, y1 >= y0)
    and the fraction of the box outside the frame."""
    box = detection.box
    height, width = shape[:2]
    dx, dy = box.width * trim, box.height * trim
    x0, y0, x1, y1 = box.x0 + dx, box.y0 + dy, box.x1 - dx, box.y1 - dy
    cx0, cy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    cx1, cy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    area = max(1e-6, (x1 - x0) * (y1 - y0))
    inside = max(0, cx1 - cx0) * max(0, cy1 - cy0)
    outside = max(0.0, 1.0 - inside / area)
    return cx0, cy0, max(cx0, cx1), max(cy0, cy1), outside


def grey_sharpness(grey: NDArray[np.uint8]) -> float:
    if grey.size == 0:
        return 0.0
    square = cv2.resize(grey, (SHARPNESS_SIDE_PX, SHARPNESS_SIDE_PX), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(square, cv2.CV_32F).var())


def grey_of(crop: RgbImage) -> NDArray[np.uint8]:
    if crop.size == 0:
        return np.zeros(crop.shape[:2], dtype=np.uint8)
    return np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def assess(image: RgbImage, detection: Detection, config: QualitySection) -> QualityReport:
    """Measured on the face's crop only: one grey conversion of the box, the inner face a view of it."""
    x0, y0, x1, y1, outside = crop_bounds(image.shape, detection)
    grey = grey_of(image[y0:y1, x0:x1])
    ix0, iy0, ix1, iy1, _ = crop_bounds(image.shape, detection, trim=INNER_FACE)
    # the trimmed box lies inside the box, so the inner face's grey is a part of the face's grey
    inner = grey[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    size = min(detection.box.width, detection.box.height)
    sharp = grey_sharpness(grey)
    yaw = estimate_yaw_deg(detection.keypoints)
    roll = estimate_roll_deg(detection.keypoints)
    light = float(inner.mean()) if inner.size else 0.0
    reasons: list[QualityReason] = []
    if size < config.min_face_px:
        reasons.append(QualityReason.TOO_SMALL)
    if sharp < config.min_sharpness:
        reasons.append(QualityReason.BLURRED)
    if abs(yaw) > config.max_yaw_deg:
        reasons.append(QualityReason.TURNED_AWAY)
    if light < config.min_brightness:
        reasons.append(QualityReason.TOO_DARK)
    elif light > config.max_brightness:
        reasons.append(QualityReason.TOO_BRIGHT)
    if outside > MAX_OUTSIDE_FRACTION:
        reasons.append(QualityReason.CUT_OFF)
    score = 0.0 if reasons else quality_score(detection.score, size, sharp, yaw, config)
    return QualityReport(size, sharp, yaw, roll, light, outside, score, tuple(reasons))


def quality_score(
    detector_score: float, size: float, sharp: float, yaw: float, config: QualitySection
) -> float:
    """Product of saturating terms: twice the minimum size or sharpness counts as perfect."""
    size_term = min(1.0, size / (2.0 * config.min_face_px))
    sharp_term = 1.0 if config.min_sharpness <= 0 else min(1.0, sharp / (2.0 * config.min_sharpness))
    pose_term = math.cos(math.radians(min(90.0, abs(yaw))))
    return max(1e-6, detector_score * size_term * sharp_term * pose_term)


T = TypeVar("T")


@dataclass
class BestSamples(Generic[T]):
    """The K best-scoring items seen so far, and a tally of why others were rejected."""

    k: int
    _heap: list[tuple[float, int, T]] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    rejected: Counter[str] = field(default_factory=Counter)
    seen: int = 0

    def offer(self, score: float, item: T) -> bool:
        """Keeps ``item`` if it is among the best K; True when kept."""
        self.seen += 1
        entry = (score, next(self._counter), item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
            return True
        if score > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)
            return True
        return False

    def reject(self, reasons: Iterable[str]) -> None:
        self.seen += 1
        self.rejected.update(reasons)

    def best(self) -> list[T]:
        """Best first."""
        return [item for _, _, item in sorted(self._heap, key=lambda entry: (-entry[0], entry[1]))]

    def __len__(self) -> int:
        return len(self._heap)

    def top_reasons(self, limit: int = 3) -> tuple[str, ...]:
        return tuple(reason for reason, _ in self.rejected.most_common(limit))
