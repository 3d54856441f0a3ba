"""How close the int8 detector comes to the float one on the fixture photos, and what each costs on the CPU.

Used by ``device models eval`` and by the build recipe, which records the figures in the manifest. Both
files run on the unit's own interpreter (``device.models.accelerator``), never TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.config import DetectionSection, ModelsSection
from device.evaluation import fixtures
from device.models.accelerator import open_model
from device.models.latency import median_latency_ms
from device.types import Detection, RgbImage
from device.vision.detect import FaceDetector, iou_one_to_many

DETECTOR = "blazeface_full_range"
EVAL_IMAGES = (
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "biden.jpg",
    *(f"sample{i}.jpg" for i in range(1, 7)),
)
PORTRAITS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut")
LATENCY_THREADS = 2
EVAL_SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class FacePair:
    image: str
    iou: float  # 0 when int8 missed the float face
    score_diff: float
    keypoint_error_pct: float | None  # mean keypoint distance, % of the float face's width


DETECTOR_INPUT_RANGE = (-1.0, 1.0)  # BlazeFace input: RGB / 127.5 - 1


def eval_images() -> dict[str, RgbImage]:
    images = {name: fixtures.load_rgb(name) for name in EVAL_IMAGES}
    images["astronaut"] = fixtures.astronaut_rgb()
    return images


def pair_faces(name: str, reference: list[Detection], candidate: list[Detection]) -> list[FacePair]:
    """Each float face with the int8 face that overlaps it most."""
    pairs = []
    if not candidate:
        return [FacePair(name, 0.0, face.score, None) for face in reference]
    boxes = np.array([[d.box.x0, d.box.y0, d.box.x1, d.box.y1] for d in candidate], np.float32)
    for face in reference:
        box = np.array([face.box.x0, face.box.y0, face.box.x1, face.box.y1], np.float32)
        overlaps = iou_one_to_many(box, boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0.0:
            pairs.append(FacePair(name, 0.0, face.score, None))
            continue
        other = candidate[best]
        distances = np.linalg.norm(face.keypoints - other.keypoints, axis=1)
        pairs.append(
            FacePair(
                name,
                float(overlaps[best]),
                abs(face.score - other.score),
                float(distances.mean() / max(face.box.width, 1.0) * 100.0),
            )
        )
    return pairs


def compare_variants(models_dir: Path) -> list[FacePair]:
    detection = DetectionSection(score_threshold=EVAL_SCORE_THRESHOLD)
    detectors = {
        variant: FaceDetector(
            open_model(ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant=variant), DETECTOR),
            detection,
        )
        for variant in ("float", "int8")
    }
    pairs = []
    for name, image in eval_images().items():
        pairs.extend(pair_faces(name, detectors["float"].detect(image), detectors["int8"].detect(image)))
    return pairs


def detector_latencies(models_dir: Path, name: str = DETECTOR) -> dict[str, float]:
    result = {}
    for variant in ("float", "int8"):
        models = ModelsSection(
            dir=models_dir, accelerator="cpu", cpu_variant=variant, cpu_threads=LATENCY_THREADS
        )
        latency = median_latency_ms(open_model(models, name), DETECTOR_INPUT_RANGE)
        result[f"{name}_latency_{variant}_ms"] = round(latency, 3)
    return result


def detector_metrics(models_dir: Path) -> dict[str, Any]:
    pairs = compare_variants(models_dir)
    matched = [p for p in pairs if p.keypoint_error_pct is not None]
    portraits = [p for p in matched if p.image in PORTRAITS]
    metrics: dict[str, Any] = {
        "iou_int8_vs_float_mean": round(float(np.mean([p.iou for p in pairs])), 4),
        "iou_int8_vs_float_min": round(min(p.iou for p in pairs), 4),
        "score_diff_int8_vs_float_max": round(max(p.score_diff for p in pairs), 4),
        "keypoint_error_int8_pct_mean": round(float(np.mean([p.keypoint_error_pct for p in matched])), 3),
        "keypoint_error_int8_pct_mean_portraits": round(
            float(np.mean([p.keypoint_error_pct for p in portraits])), 3
        ),
        "detector_faces_compared": len(pairs),
        "detector_faces_missed_by_int8": len(pairs) - len(matched),
    }
    metrics.update(detector_latencies(models_dir))
    return metrics
