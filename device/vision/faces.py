"""Faces in a still picture: detect, align and embed every face, largest first.

The pipeline works on video (tracks, quality gate, one decision per visit); the commands that work on
single pictures (enrolment, identify, calibrate, ``device compare``) need only "which faces are in this
image and what are their embeddings". ``FaceAnalyzer`` is that: the same detector, alignment and embedder
the unit runs, so a template enrolled from a photo is comparable with what the camera sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from device.atomicio import read_capped
from device.config import DEFAULT_MAX_IMAGE_PIXELS, UnitConfig
from device.errors import UserError
from device.timing import LatencyRecorder, TimedModel
from device.types import Detection, FrameViews, RgbImage, Vector
from device.vision.picture_header import picture_dimensions

log = logging.getLogger(__name__)


class ImageError(UserError):
    """A picture that cannot be read or decoded (wrong path, not an image, truncated file).

    The message names the path; ``reason`` is the same without it, for reports that list the path
    already (so an undecodable picture names its path once)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Detector(Protocol):
    input_size: int  # the side of the square model input (the letterbox the capture thread prepares)

    def detect(self, image_rgb: RgbImage, views: FrameViews | None = None) -> list[Detection]: ...


class Embedder(Protocol):
    def embed(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]: ...


Aligner = Callable[[RgbImage, NDArray[np.float32]], RgbImage]


@dataclass(frozen=True)
class AnalyzedFace:
    detection: Detection
    chip: RgbImage  # the aligned 150x150 RGB input of the embedder
    embedding: Vector  # (128,) float32, L2-normalised


PICTURE_HEADER_ALLOWANCE = 1024 * 1024  # metadata (EXIF, ICC profile) beside the pixels


def max_picture_file_bytes(max_pixels: int) -> int:
    """No picture within ``max_pixels`` needs more bytes than 24-bit BMP, uncompressed, plus its metadata."""
    return 3 * max_pixels + PICTURE_HEADER_ALLOWANCE


def load_image_rgb(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> RgbImage:
    """Reads a picture as RGB; raises ``ImageError`` with the path and the reason.

    The size in the header is checked before decoding (``limits.max_image_pixels``), so a small file
    that would decode to gigabytes is refused without allocating them.
    """
    try:
        raw = read_capped(path, max_picture_file_bytes(max_pixels), "the picture")
    except OSError as error:
        raise ImageError(path, f"cannot read the file ({error.strerror})") from None
    data = np.frombuffer(raw, dtype=np.uint8)
    dimensions = picture_dimensions(raw[:65_536])
    if dimensions is None:
        raise ImageError(path, "not a decodable image (not a jpeg, png, bmp or webp picture)")
    width, height = dimensions
    if width * height > max_pixels:
        raise ImageError(
            path,
            f"the picture is {width}x{height} ({width * height / 1e6:.0f} Mpx), more than the "
            f"limit of {max_pixels / 1e6:.0f} Mpx (limits.max_image_pixels); scale it down first",
        )
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # a header that promises what the body does not hold
        decoded = None
    if decoded is None:
        raise ImageError(path, "not a decodable image (jpeg, png, bmp, webp)")
    rgb: RgbImage = np.ascontiguousarray(decoded[:, :, ::-1])
    return rgb


def face_area(detection: Detection) -> float:
    return detection.box.area


class FaceAnalyzer:
    """Detector + alignment + embedder for still pictures."""

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        aligner: Aligner,
        *,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.aligner = aligner
        self._health = health

    @classmethod
    def from_config(cls, config: UnitConfig) -> FaceAnalyzer:
        """The unit's own models (Edge TPU when present, else CPU), as the config selects them.

        Raises ``device.models.manifest.ModelFileError`` when a model file is missing or does not match the
        manifest.
        """
        return cls.from_stages(load_stages(config))

    @classmethod
    def from_stages(cls, stages: Stages) -> FaceAnalyzer:
        """Shares models already opened for the video pipeline (one interpreter per model per process)."""
        return cls(stages.detector, stages.embedder, stages.aligner, health=stages.health)

    def analyze(self, image_rgb: RgbImage, *, max_faces: int | None = None) -> list[AnalyzedFace]:
        """Every detected face (or the ``max_faces`` largest), largest first, with chip and embedding."""
        detections = sorted(self.detector.detect(image_rgb), key=face_area, reverse=True)
        if max_faces is not None:
            detections = detections[:max_faces]
        if not detections:
            return []
        chips = np.stack([self.aligner(image_rgb, detection.keypoints) for detection in detections])
        embeddings = self.embedder.embed(chips)
        return [
            AnalyzedFace(detection, chips[index], embeddings[index])
            for index, detection in enumerate(detections)
        ]

    def largest(self, image_rgb: RgbImage) -> AnalyzedFace | None:
        faces = self.analyze(image_rgb, max_faces=1)
        return faces[0] if faces else None

    def health(self) -> dict[str, Any]:
        return self._health() if self._health is not None else {}


@dataclass(frozen=True)
class Stages:
    """The model-backed stages, opened once and shared by the analyzer and the video pipeline."""

    detector: Detector
    embedder: Embedder
    aligner: Aligner
    models: dict[str, Any]  # name -> InferenceModel (for health and the benchmark's timing)

    def health(self) -> dict[str, Any]:
        return {role: model.health() for role, model in self.models.items()}


def load_stages(
    config: UnitConfig, *, state_dir: Path | None = None, latencies: LatencyRecorder | None = None
) -> Stages:
    """Opens the detector and embedder models named by the config (accelerator seam decides the device).

    ``latencies``: every model ``run`` is timed into it (``detector_inference``, ``embedder_inference``).
    ``state_dir``: where the float/int8 CPU choice is kept; by default the unit's state dir when the
    config file named one that exists (so a restart neither times both CPU files again nor flips).
    """
    # Imported here: these modules pull in the TFLite runtime, which commands that never run a model
    # (config, subjects, audit, ...) should not pay for.
    from device.models.accelerator import open_model
    from device.models.cpu_variant import choice_state_dir
    from device.vision.detect import FaceDetector
    from device.vision.embed import FaceEmbedder
    from device.vision.shape_predictor5 import load_landmark_aligner

    if state_dir is None:
        state_dir = choice_state_dir(config.unit.state_dir)
    detector_model: Any = open_model(config.models, config.models.detector, state_dir=state_dir)
    embedder_model: Any = open_model(config.models, config.models.embedder, state_dir=state_dir)
    if latencies is not None:
        detector_model = TimedModel(detector_model, "detector", latencies)
        embedder_model = TimedModel(embedder_model, "embedder", latencies)
    log.info("detector on %s, embedder on %s", detector_model.state, embedder_model.state)
    return Stages(
        detector=FaceDetector(detector_model, config.detection, infrared=config.capture.infrared),
        embedder=FaceEmbedder(
            embedder_model, mirror=config.models.embed_mirror, mirror_grey=config.models.embed_mirror_grey
        ),
        # dlib's 5-point alignment (issue 15): the chip lands where dlib's embedder expects it.
        aligner=load_landmark_aligner(config.models.dir),
        models={"detector": detector_model, "embedder": embedder_model},
    )
