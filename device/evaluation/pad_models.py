"""The PAD texture models measured: int8 vs float agreement, CPU latency, and the crop-scale re-fit.

Used by the build recipe (models/build/minifasnet.py records the figures in the manifest), by
``device models eval`` and by the crop-scale measurement behind ``BLAZEFACE_CROP_SCALE``. Everything runs
on the unit's own interpreter (``device.models.accelerator``) with BlazeFace's float boxes.

Faces used: the three public samples (``tests/data/pad_samples``: image_F1 print, image_F2 screen,
image_T1 live) and every face BlazeFace finds in the registry fixture photos (all bona fide). These are
the only labelled images available here; they are a smoke test, not an evaluation of PAD error rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.config import DetectionSection, ModelsSection
from device.evaluation import fixtures
from device.models.accelerator import InferenceModel, open_model
from device.models.latency import median_latency_ms
from device.types import Box, RgbImage
from device.vision.detect import FaceDetector
from device.vision.faces import load_image_rgb
from device.vision.pad_texture import REFERENCE_CROP_SCALE, TextureCue, crop_scale_for

DETECTOR = "blazeface_full_range"
TEXTURE_MODELS = ("minifasnet_v2", "minifasnet_v1se")
SAMPLE_LABELS = {"image_F1": False, "image_F2": False, "image_T1": True}  # True = bona fide
DEFAULT_SAMPLES_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "pad_samples"
TEXTURE_INPUT_RANGE = (0.0, 255.0)
LATENCY_THREADS = 1
THRESHOLD = 0.5


@dataclass(frozen=True)
class LabelledFace:
    label: str  # image name, with "#n" for the n-th largest face of a fixture photo
    image: RgbImage
    box: Box
    bona_fide: bool


def labelled_faces(models_dir: Path, samples_dir: Path = DEFAULT_SAMPLES_DIR) -> list[LabelledFace]:
    """The public samples' largest faces and every fixture face, with BlazeFace (float) boxes."""
    models = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant="float")
    detector = FaceDetector(open_model(models, DETECTOR), DetectionSection())
    faces: list[LabelledFace] = []
    for name, bona_fide in SAMPLE_LABELS.items():
        path = samples_dir / f"{name}.jpg"
        if not path.is_file():
            continue
        image = load_image_rgb(path)
        found = sorted(detector.detect(image), key=lambda d: d.box.area, reverse=True)
        if found:
            faces.append(LabelledFace(name, image, found[0].box, bona_fide))
    images = {name: fixtures.load_rgb(name) for name in fixtures.FACE_IMAGES}
    images["astronaut"] = fixtures.astronaut_rgb()
    for name, image in images.items():
        found = sorted(detector.detect(image), key=lambda d: d.box.area, reverse=True)
        for index, detection in enumerate(found):
            faces.append(LabelledFace(f"{name}#{index}", image, detection.box, True))
    return faces


def open_texture_models(models_dir: Path, variant: str, threads: int = 2) -> list[InferenceModel]:
    models = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant=variant, cpu_threads=threads)
    return [open_model(models, name) for name in TEXTURE_MODELS]


def per_model_scores(
    models: Sequence[InferenceModel], scales: Sequence[float], faces: Sequence[LabelledFace]
) -> dict[str, list[float]]:
    """P(real) of each model on each face (model name -> one value per face)."""
    result: dict[str, list[float]] = {}
    for model, scale in zip(models, scales, strict=True):
        cue = TextureCue([model], [scale])
        result[model.name] = [cue.p_real(face.image, face.box) for face in faces]
    return result


def separation(scores: Sequence[float], faces: Sequence[LabelledFace]) -> dict[str, Any]:
    """How well one set of P(real) values separates the labelled faces at the 0.5 threshold."""
    bona_fide = [s for s, f in zip(scores, faces, strict=True) if f.bona_fide]
    attacks = [s for s, f in zip(scores, faces, strict=True) if not f.bona_fide]
    return {
        "attack_p_real_max": round(max(attacks), 4) if attacks else None,
        "bona_fide_p_real_min": round(min(bona_fide), 4),
        "bona_fide_below_threshold": sorted(
            f.label for s, f in zip(scores, faces, strict=True) if f.bona_fide and s < THRESHOLD
        ),
        "attacks_at_or_above_threshold": sorted(
            f.label for s, f in zip(scores, faces, strict=True) if not f.bona_fide and s >= THRESHOLD
        ),
        "bona_fide_log_odds_median": round(float(np.median([log_odds(s) for s in bona_fide])), 3),
        "attack_log_odds_max": round(max(log_odds(s) for s in attacks), 3) if attacks else None,
    }


def log_odds(p: float) -> float:
    clipped = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(clipped / (1 - clipped)))


BOX_JITTER = 0.06  # of the box side, per edge: BlazeFace's boxes move this much from frame to frame
JITTERS_PER_FACE = 8
SWEEP_SEED = 1


def jittered_boxes(box: Box, rng: np.random.Generator, count: int) -> list[Box]:
    """The box and ``count - 1`` copies with each edge moved by up to BOX_JITTER of the box side."""
    offsets = rng.uniform(-BOX_JITTER, BOX_JITTER, (count - 1, 4))
    width, height = box.width, box.height
    return [box] + [
        Box(box.x0 + a * width, box.y0 + b * height, box.x1 + c * width, box.y1 + d * height)
        for a, b, c, d in offsets
    ]


def crop_scale_sweep(
    models_dir: Path, factors: Sequence[float], samples_dir: Path = DEFAULT_SAMPLES_DIR
) -> dict[str, Any]:
    """For each factor f, both float models at f x their reference crop scale on BlazeFace boxes.

    Per factor: how many bona fide crops (every labelled face, its box and 7 jittered copies, so one
    borderline face does not decide the fit) fall below 0.5 fused, the attacks' highest fused P(real),
    and the unjittered per-model and fused separation.
    """
    faces = labelled_faces(models_dir, samples_dir)
    models = open_texture_models(models_dir, "float")
    rng = np.random.default_rng(SWEEP_SEED)
    boxes = [jittered_boxes(face.box, rng, JITTERS_PER_FACE) for face in faces]
    sweep: dict[str, Any] = {}
    for factor in factors:
        scales = [REFERENCE_CROP_SCALE[name] * factor for name in TEXTURE_MODELS]
        cue = TextureCue(models, scales)
        bona_fide: list[float] = []
        attacks: list[float] = []
        for face, face_boxes in zip(faces, boxes, strict=True):
            values = [cue.p_real(face.image, box) for box in face_boxes]
            (bona_fide if face.bona_fide else attacks).extend(values)
        scores = per_model_scores(models, scales, faces)
        fused = [float(np.mean(values)) for values in zip(*scores.values(), strict=True)]
        sweep[f"{factor:.2f}"] = {
            "scales": [round(s, 3) for s in scales],
            "jittered_bona_fide_below_0.5": f"{sum(p < THRESHOLD for p in bona_fide)}/{len(bona_fide)}",
            "jittered_bona_fide_p_real_p10": round(float(np.percentile(bona_fide, 10)), 4),
            "jittered_attack_p_real_max": round(max(attacks), 4) if attacks else None,
            "fused": separation(fused, faces),
            **{name: separation(values, faces) for name, values in scores.items()},
        }
    return {"faces": len(faces), "attacks": sum(not f.bona_fide for f in faces), "sweep": sweep}


def pad_model_metrics(models_dir: Path, name: str, samples_dir: Path = DEFAULT_SAMPLES_DIR) -> dict[str, Any]:
    """int8 vs float P(real) of one texture model on the labelled faces, and its CPU latency."""
    faces = labelled_faces(models_dir, samples_dir)
    scale = crop_scale_for(name)
    scores = {}
    for variant in ("float", "int8"):
        model = open_model(ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant=variant), name)
        scores[variant] = per_model_scores([model], [scale], faces)[name]
    diffs = np.abs(np.array(scores["float"]) - np.array(scores["int8"]))
    same_side = [
        (f >= THRESHOLD) == (q >= THRESHOLD) for f, q in zip(scores["float"], scores["int8"], strict=True)
    ]
    latency = {}
    for variant in ("float", "int8"):
        models = ModelsSection(
            dir=models_dir,
            accelerator="cpu",
            cpu_variant=variant,
            cpu_threads=LATENCY_THREADS,
        )
        latency[variant] = round(median_latency_ms(open_model(models, name), TEXTURE_INPUT_RANGE), 3)
    samples = {
        f.label: {"float": round(p, 4), "int8": round(q, 4)}
        for f, p, q in zip(faces, scores["float"], scores["int8"], strict=True)
        if f.label in SAMPLE_LABELS
    }
    return {
        f"{name}_p_real_int8_vs_float_abs_diff_max": round(float(diffs.max()), 4),
        f"{name}_p_real_int8_vs_float_abs_diff_mean": round(float(diffs.mean()), 4),
        f"{name}_p_real_int8_float_same_side_of_0.5": f"{sum(same_side)}/{len(same_side)}",
        f"{name}_p_real_on_samples": samples,
        f"{name}_crop_scale_blazeface": round(scale, 4),
        f"{name}_faces_compared": len(faces),
        f"{name}_latency_float_ms_1_thread": latency["float"],
        f"{name}_latency_int8_ms_1_thread": latency["int8"],
        f"{name}_measured_with": "device.evaluation.pad_models.pad_model_metrics: the 3 public samples "
        "and every BlazeFace (float) face of the fixture photos, ai-edge-litert on the build host's CPU; "
        "latency = median of 50 runs after warm-up, 1 thread",
    }


LANDMARK_MODEL = "face_landmark"
LANDMARK_INPUT_RANGE = (0.0, 1.0)


def landmark_metrics(models_dir: Path) -> dict[str, Any]:
    """The face mesh against BlazeFace's eye, nose and mouth keypoints on the fixture faces; its latency."""
    from device.vision.face_mesh import (
        LEFT_EYE_CONTOUR,
        MOUTH_OUTER,
        NOSE_TIP,
        RIGHT_EYE_CONTOUR,
        FaceLandmarker,
    )

    models = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant="float")
    detector = FaceDetector(open_model(models, DETECTOR), DetectionSection())
    model = open_model(models, LANDMARK_MODEL)
    landmarker = FaceLandmarker(model)
    images = {name: fixtures.load_rgb(name) for name in fixtures.FACE_IMAGES}
    errors: dict[str, list[float]] = {"portraits": [], "all": []}
    presences = []
    for name, image in images.items():
        for detection in detector.detect(image):
            mesh = landmarker.mesh(image, detection.box, detection.keypoints[:2])
            presences.append(mesh.presence)
            side = max(detection.box.width, detection.box.height)
            centres = [
                mesh.points[list(RIGHT_EYE_CONTOUR), :2].mean(axis=0),
                mesh.points[list(LEFT_EYE_CONTOUR), :2].mean(axis=0),
                mesh.points[NOSE_TIP, :2],
                mesh.points[list(MOUTH_OUTER), :2].mean(axis=0),
            ]
            for centre, keypoint in zip(centres, detection.keypoints[:4], strict=True):
                error = float(np.linalg.norm(centre - keypoint) / side)
                errors["all"].append(error)
                if name.startswith(("obama", "biden")) and "partial" not in name:
                    errors["portraits"].append(error)
    threads = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant="float", cpu_threads=1)
    latency = median_latency_ms(open_model(threads, LANDMARK_MODEL), LANDMARK_INPUT_RANGE)
    return {
        "face_landmark_vs_blazeface_keypoints_median_of_box": round(float(np.median(errors["all"])), 4),
        "face_landmark_vs_blazeface_keypoints_max_of_box": round(float(np.max(errors["all"])), 4),
        "face_landmark_vs_blazeface_keypoints_portraits_max_of_box": round(
            float(np.max(errors["portraits"])), 4
        ),
        "face_landmark_faces": len(presences),
        "face_landmark_presence_min": round(float(np.min(presences)), 4),
        "face_landmark_latency_float_ms_1_thread": round(latency, 3),
        "face_landmark_measured_with": "device.evaluation.pad_models.landmark_metrics: mean of the "
        "mesh's eye contours, nose tip and outer lips against BlazeFace's keypoints, as a fraction of "
        "the box side, on every BlazeFace face of the fixture photos (eyes levelled from BlazeFace's eye "
        "keypoints); latency = median of 50 runs, 1 thread, ai-edge-litert",
    }
