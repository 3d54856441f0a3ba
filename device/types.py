"""Plain data passed between pipeline stages. Data flows one way; no stage reaches back into another.

capture -> Frame -> detect -> Detection -> track -> Track -> quality/align -> FaceSample -> embed ->
Embedding -> match -> Match -> decide -> Decision -> publish
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

RgbImage = NDArray[np.uint8]  # (H, W, 3) RGB
Vector = NDArray[np.float32]


@dataclass(frozen=True)
class Letterbox:
    """Where the frame sits inside the detector's square input: input = frame * scale + pad."""

    tensor: NDArray[np.uint8]  # (size, size, 3) RGB
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_frame(self, points: NDArray[np.float32]) -> NDArray[np.float32]:
        """Input-pixel (x, y) pairs in the last axis back to frame pixels."""
        # Pad and scale in the points' own float dtype: the arithmetic a Python number would get (float32
        # for float32 points), in two array operations instead of eight.
        dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.dtype(np.float64)
        pad: NDArray[Any] = np.array([self.pad_x, self.pad_y], dtype=dtype)
        scale: NDArray[Any] = np.array([self.scale_x, self.scale_y], dtype=dtype)
        frame_points: NDArray[np.float32] = (points - pad) / scale
        return frame_points


@dataclass(frozen=True)
class FrameViews:
    """What the stages need of a frame besides the frame itself, prepared off the pipeline thread (by the
    capture thread, or by the camera's ISP on the Pi); None where a view was not prepared."""

    motion_grey: NDArray[np.uint8] | None = None  # the motion gate's small grey picture
    detector_input: Letterbox | None = None  # the frame fitted into the detector's square input
    colourless: bool | None = None  # no colour worth the name: the detector's grey path


@dataclass(frozen=True)
class Frame:
    image: RgbImage
    ts: float  # time.monotonic() at capture
    seq: int  # per-source frame counter, gaps mean dropped frames
    views: FrameViews | None = None


@dataclass(frozen=True)
class Box:
    """Pixel coordinates, (x0, y0) top-left inclusive, (x1, y1) bottom-right exclusive."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height


class Keypoint(StrEnum):
    """BlazeFace's six keypoints, in the order the model emits them (subject's right eye first)."""

    RIGHT_EYE = "right_eye"
    LEFT_EYE = "left_eye"
    NOSE_TIP = "nose_tip"
    MOUTH = "mouth"
    RIGHT_EAR = "right_ear"
    LEFT_EAR = "left_ear"


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    keypoints: NDArray[np.float32]  # (6, 2) pixel x, y in Keypoint order


class TrackState(StrEnum):
    NEW = "new"
    CONFIRMED = "confirmed"
    LOST = "lost"


@dataclass
class Track:
    id: int
    detections: list[Detection] = field(default_factory=list)
    state: TrackState = TrackState.NEW


@dataclass(frozen=True)
class FaceSample:
    aligned: RgbImage  # the embedder's input chip (150x150 RGB for dlib's ResNet)
    quality: float  # higher is better; used to keep the best K per track
    reasons: tuple[str, ...] = ()  # why quality is limited (blur, yaw, exposure, size)


@dataclass(frozen=True)
class Embedding:
    vector: Vector  # L2-normalised


@dataclass(frozen=True)
class Match:
    subject_id: str | None  # best subject, None when the gallery is empty
    similarity: float  # cosine to the best subject
    margin: float | None  # best minus the best *other* subject's similarity; None when no other subject


class DecisionType(StrEnum):
    RECOGNIZED = "recognized"
    UNKNOWN = "unknown"
    INSUFFICIENT_QUALITY = "insufficient_quality"
    PRESENTATION_ATTACK = "presentation_attack"  # a photo, screen or video of a face, not a person


@dataclass(frozen=True)
class PadOutcome:
    """Presentation-attack detection of one visit: scores only, never a picture.

    ``passed`` None: every cue abstained; ``cues``: each cue's score 0..1 (1 = live) or None (abstained).
    """

    passed: bool | None
    score: float | None
    cues: dict[str, float | None] = field(default_factory=dict)
    failed: tuple[str, ...] = ()  # the cues that rejected the face
    # "attack" (a cue rejected), "pass" (none did, and one saw a live face), "uncertain" (none did, and
    # none could tell: the texture CNN abstained on a grey face and nothing moved); None without PAD
    assurance: str | None = None


@dataclass(frozen=True)
class Decision:
    type: DecisionType
    subject_id: str | None
    similarity: float | None
    margin: float | None
    frames: int
    reasons: tuple[str, ...]
    track_id: int
    pad: PadOutcome | None = None  # None when PAD did not run (mode off, no usable sample)
