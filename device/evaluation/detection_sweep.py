"""The detection threshold by measurement: missed faces vs false detections, per threshold and condition.

Faces: every face the float detector finds at score 0.5 on the fixture photos (the reference set of
``device.evaluation.detector``: obama x3, biden, face-api samples 1-6, the astronaut), and the same photos
made harder the way an entrance camera sees them: grey (a NoIR camera at night), half size, under-exposed
(pixels x 0.35) and grey + under-exposed. A face counts as found at threshold t when a detection of score
>= t overlaps its (scaled) reference box with IoU >= 0.3. The detector's ``min_face_px`` is a separate,
configured size gate; the sweep reports it apart (``below_min_face_px``) so that the threshold is chosen
on what the model sees.

Grey frames take the detector's grey path (a skin tint on its input, ``grey_score_threshold``); the
sweep keeps the two paths apart: false detections on colour and on grey face-free frames, and at the
shipped settings each face and each face-free frame is judged by the threshold of the path it took.

Face-free images: scikit-image's data set pictures without a human face (a cat, coins, textures, a rocket,
text, ...; shipped inside the package) and empty entrance frames (``device.lab.democlip.hallway``, handed
in by the caller, as this layer does not import the unit), each also grey and under-exposed. Every
detection there is false; it counts when its score is >= t and it is at least ``min_face_px`` wide (a
smaller one never reaches a decision).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.config import DetectionSection, ModelsSection
from device.evaluation.detector import DETECTOR, eval_images
from device.models.accelerator import open_model
from device.types import Detection, RgbImage
from device.vision.detect import FaceDetector, iou_one_to_many, is_grey

REFERENCE_SCORE = 0.5
SWEEP_FLOOR = 0.05  # the detector runs at this threshold; higher ones are applied afterwards
MATCH_IOU = 0.3
UNDER_EXPOSURE_GAIN = 0.35
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
# scikit-image data pictures without a human face (camera and astronaut show one; lfw_subset is faces).
FACE_FREE_SKIMAGE = (
    "brick",
    "cell",
    "chelsea",
    "checkerboard",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


def grey(image: RgbImage) -> RgbImage:
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(np.repeat(luma[:, :, None], 3, axis=2))


def half(image: RgbImage) -> RgbImage:
    return np.asarray(cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))


def under_exposed(image: RgbImage) -> RgbImage:
    return np.asarray(np.round(image.astype(np.float32) * UNDER_EXPOSURE_GAIN), dtype=np.uint8)


def as_rgb(image: np.ndarray) -> RgbImage:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


# condition -> (transform, scale of the reference boxes)
CONDITIONS: dict[str, tuple[Callable[[RgbImage], RgbImage], float]] = {
    "original": (lambda image: image, 1.0),
    "grey": (grey, 1.0),
    "half_size": (half, 0.5),
    "under_exposed": (under_exposed, 1.0),
    "grey_under_exposed": (lambda image: under_exposed(grey(image)), 1.0),
}
REQUIRED_CONDITIONS = ("original", "grey", "half_size")


def skimage_face_free() -> dict[str, RgbImage]:
    from skimage import data

    return {f"skimage:{name}": as_rgb(np.asarray(getattr(data, name)())) for name in FACE_FREE_SKIMAGE}


@dataclass(frozen=True)
class SweepResult:
    thresholds: tuple[float, ...]
    faces: int
    missed: dict[str, list[int]]  # condition -> missed faces per threshold
    below_min_face_px: dict[str, int]  # condition -> reference faces narrower than min_face_px there
    face_free_images: int
    false_detections: list[int]  # per threshold, colour face-free frames (and their variants)
    false_detections_grey: list[int]  # per threshold, grey face-free frames (grey path)
    weakest_face_score: dict[str, float]  # condition -> lowest best score of a reference face
    strongest_false_score: float  # colour frames
    strongest_false_score_grey: float  # grey frames, after the grey path's tint
    shipped: dict[str, Any]  # missed faces and false detections at the configured thresholds

    def as_json(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "faces": self.faces,
            "missed": self.missed,
            "below_min_face_px": self.below_min_face_px,
            "face_free_images": self.face_free_images,
            "false_detections": self.false_detections,
            "false_detections_grey": self.false_detections_grey,
            "weakest_face_score": {k: round(v, 4) for k, v in self.weakest_face_score.items()},
            "strongest_false_score": round(self.strongest_false_score, 4),
            "strongest_false_score_grey": round(self.strongest_false_score_grey, 4),
            "at_shipped_settings": self.shipped,
        }


def best_scores(reference: list[Detection], found: list[Detection], scale: float) -> list[float]:
    """Per reference face, the highest score of a detection overlapping its scaled box."""
    if not found:
        return [0.0] * len(reference)
    boxes = np.array([[d.box.x0, d.box.y0, d.box.x1, d.box.y1] for d in found], np.float32)
    scores = np.array([d.score for d in found], np.float32)
    result = []
    for face in reference:
        box = np.array([face.box.x0, face.box.y0, face.box.x1, face.box.y1], np.float32) * scale
        overlapping = iou_one_to_many(box, boxes) >= MATCH_IOU
        result.append(float(scores[overlapping].max()) if overlapping.any() else 0.0)
    return result


def sweep(
    detector_for: Callable[[float], FaceDetector],
    faces: Mapping[str, RgbImage],
    face_free: Mapping[str, RgbImage],
    min_face_px: int,
    thresholds: tuple[float, ...] = THRESHOLDS,
    shipped: DetectionSection | None = None,
) -> SweepResult:
    """``detector_for(t)``: the detector with both its colour and grey thresholds at ``t``."""
    settings = shipped or DetectionSection()

    def shipped_threshold(image: RgbImage) -> float:
        return settings.grey_score_threshold if is_grey(image) else settings.score_threshold

    reference_detector = detector_for(REFERENCE_SCORE)
    floor_detector = detector_for(SWEEP_FLOOR)
    references = {name: reference_detector.detect(image) for name, image in faces.items()}
    missed: dict[str, list[int]] = {}
    missed_shipped: dict[str, int] = {}
    small: dict[str, int] = {}
    weakest: dict[str, float] = {}
    for condition, (transform, scale) in CONDITIONS.items():
        scores: list[float] = []
        small[condition] = 0
        missed_shipped[condition] = 0
        for name, image in faces.items():
            seen = transform(image)
            found = best_scores(references[name], floor_detector.detect(seen), scale)
            scores += found
            missed_shipped[condition] += sum(1 for score in found if score < shipped_threshold(seen))
            small[condition] += sum(1 for f in references[name] if f.box.width * scale < min_face_px)
        missed[condition] = [sum(1 for s in scores if s < t) for t in thresholds]
        weakest[condition] = min(scores) if scores else 0.0
    colour_scores: list[float] = []
    grey_scores: list[float] = []
    false_shipped = 0
    variants = (lambda image: image, grey, under_exposed)
    for image in face_free.values():
        for variant in variants:
            seen = variant(image)
            found = [d.score for d in floor_detector.detect(seen) if d.box.width >= min_face_px]
            (grey_scores if is_grey(seen) else colour_scores).extend(found)
            false_shipped += sum(1 for score in found if score >= shipped_threshold(seen))
    return SweepResult(
        thresholds=thresholds,
        faces=sum(len(r) for r in references.values()),
        missed=missed,
        below_min_face_px=small,
        face_free_images=len(face_free) * len(variants),
        false_detections=[sum(1 for s in colour_scores if s >= t) for t in thresholds],
        false_detections_grey=[sum(1 for s in grey_scores if s >= t) for t in thresholds],
        weakest_face_score=weakest,
        strongest_false_score=max(colour_scores, default=0.0),
        strongest_false_score_grey=max(grey_scores, default=0.0),
        shipped={
            "score_threshold": settings.score_threshold,
            "grey_score_threshold": settings.grey_score_threshold,
            "missed": missed_shipped,
            "false_detections": false_shipped,
        },
    )


def detection_sweep(
    models_dir: Path,
    extra_face_free: Mapping[str, RgbImage],
    variant: str = "float",
    detection: DetectionSection | None = None,
) -> SweepResult:
    """The sweep with the shipped detector file (``variant``) and the configured detection settings."""
    settings = detection or DetectionSection()
    models = ModelsSection.model_validate({"dir": models_dir, "accelerator": "cpu", "cpu_variant": variant})
    model = open_model(models, DETECTOR)

    def detector_for(threshold: float) -> FaceDetector:
        # No size gate here: the sweep sees every face the model finds and reports size separately.
        config = settings.model_copy(
            update={
                "score_threshold": threshold,
                "grey_score_threshold": threshold,
                "min_face_px": 8,
                "zone": [],
            }
        )
        return FaceDetector(model, config)

    face_free = {**skimage_face_free(), **extra_face_free}
    return sweep(detector_for, eval_images(), face_free, settings.min_face_px, shipped=settings)
