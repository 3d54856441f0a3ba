"""``device models eval --robustness``: the fixture pairs under the degradations an entrance camera meets.

Identities: Obama's three photos (3 genuine pairs) against Biden and the largest face of each face-api
sample photo (impostor pairs: every Obama photo against each of them, 21 pairs). Per condition, for our
pipeline (the shipped float detector at the default settings, dlib's 5-point alignment, the float
embedder) and for dlib's own (HOG detector, 5-point predictor, ``compute_face_descriptor``; dev extra):

- ``found_rate``: share of the 10 pictures where a face was found;
- ``genuine_min``, ``impostor_max`` and ``margin`` = genuine_min - impostor_max over the pairs whose two
  faces were both found (null when no genuine or no impostor pair is left).

Conditions: the photo as is (shrunk to at most 960 px, as in the embedder evaluation), grey, the largest
face scaled to 40 px wide, JPEG quality 30, Gaussian blur (sigma 2 % of the face width), under-exposed
(x 0.35) and over-exposed (x 1.8, clipped). ±30° yaw needs photos of the same people turned by a known
angle, which the fixtures do not have: it is reported as unavailable rather than faked by warping.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import DetectionSection
from device.evaluation.detection_sweep import grey, under_exposed
from device.evaluation.embedder import (
    DETECTOR,
    EMBEDDER,
    IMPOSTOR,
    OBAMAS,
    RESNET_FILE,
    SAMPLES,
    SHAPE_PREDICTOR_FILE,
    OracleUnavailableError,
    dlib_model_file,
    load_eval_images,
    open_variant,
)
from device.types import RgbImage
from device.vision.align import CHIP_SIZE
from device.vision.detect import FaceDetector
from device.vision.embed import FaceEmbedder
from device.vision.faces import FaceAnalyzer
from device.vision.shape_predictor5 import load_landmark_aligner

SMALL_FACE_PX = 40
JPEG_QUALITY = 30
BLUR_SIGMA_OF_FACE = 0.02
OVER_EXPOSURE_GAIN = 1.8
UNAVAILABLE = {"yaw_30": "no fixture photos of one person turned by a known +-30 degrees"}

Embedder = Callable[[RgbImage], NDArray[np.float32] | None]  # largest face's unit vector, or None


def jpeg(image: RgbImage, quality: int = JPEG_QUALITY) -> RgbImage:
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise ValueError("JPEG round trip failed")
    return np.ascontiguousarray(decoded[:, :, ::-1])


def over_exposed(image: RgbImage) -> RgbImage:
    return np.asarray(np.clip(image.astype(np.float32) * OVER_EXPOSURE_GAIN, 0, 255), dtype=np.uint8)


def conditions(face_width: float) -> dict[str, Callable[[RgbImage], RgbImage]]:
    """Each degradation for a picture whose largest face is ``face_width`` px wide."""
    small_scale = min(1.0, SMALL_FACE_PX / max(face_width, 1.0))
    sigma = max(0.5, BLUR_SIGMA_OF_FACE * face_width)
    return {
        "original": lambda image: image,
        "grey": grey,
        "face_40px": lambda image: np.asarray(
            cv2.resize(image, None, fx=small_scale, fy=small_scale, interpolation=cv2.INTER_AREA)
        ),
        "jpeg_q30": jpeg,
        "blur": lambda image: np.asarray(cv2.GaussianBlur(image, (0, 0), sigma)),
        "under_exposed": under_exposed,
        "over_exposed": over_exposed,
    }


def pair_figures(vectors: Mapping[str, NDArray[np.float32] | None]) -> dict[str, Any]:
    found = {name: vector for name, vector in vectors.items() if vector is not None}
    obamas = [found[name] for name in OBAMAS if name in found]
    others = [found[name] for name in (IMPOSTOR, *SAMPLES) if name in found]
    genuine = [float(a @ b) for a, b in itertools.combinations(obamas, 2)]
    impostor = [float(a @ b) for a in obamas for b in others]
    figures: dict[str, Any] = {"found_rate": round(len(found) / len(vectors), 4)}
    figures["genuine_min"] = round(min(genuine), 4) if genuine else None
    figures["impostor_max"] = round(max(impostor), 4) if impostor else None
    both = genuine and impostor
    figures["margin"] = round(min(genuine) - max(impostor), 4) if both else None
    return figures


def our_embedder(models_dir: Path) -> Embedder:
    analyzer = FaceAnalyzer(
        FaceDetector(open_variant(models_dir, DETECTOR, "float"), DetectionSection()),
        FaceEmbedder(open_variant(models_dir, EMBEDDER, "float")),
        load_landmark_aligner(models_dir),
    )

    def embed(image: RgbImage) -> NDArray[np.float32] | None:
        face = analyzer.largest(image)
        return None if face is None else face.embedding

    return embed


def dlib_embedder() -> Embedder:
    try:
        import dlib
    except ImportError as error:
        raise OracleUnavailableError(
            f"the robustness evaluation needs dlib-bin (dev extra): {error}"
        ) from None
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR_FILE)))
    recogniser = dlib.face_recognition_model_v1(str(dlib_model_file(RESNET_FILE)))

    def embed(image: RgbImage) -> NDArray[np.float32] | None:
        # Small pictures get one upsampling step, as face_recognition does by default; the large ones do
        # not need it (and it would take seconds each).
        upsample = 1 if max(image.shape[:2]) <= 480 else 0
        rects = list(detector(image, upsample))
        if not rects:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        vector = np.asarray(recogniser.compute_face_descriptor(image, shapes(image, rect)), np.float32)
        return vector / np.linalg.norm(vector)

    return embed


def largest_face_widths(models_dir: Path, images: Mapping[str, RgbImage]) -> dict[str, float]:
    detector = FaceDetector(open_variant(models_dir, DETECTOR, "float"), DetectionSection())
    widths = {}
    for name, image in images.items():
        faces = detector.detect(image)
        widths[name] = max((face.box.width for face in faces), default=float(CHIP_SIZE))
    return widths


def robustness_metrics(models_dir: Path) -> dict[str, Any]:
    images = load_eval_images((*OBAMAS, IMPOSTOR, *SAMPLES))
    widths = largest_face_widths(models_dir, images)
    pipelines = {"ours": our_embedder(models_dir), "dlib": dlib_embedder()}
    names = list(conditions(1.0))
    report: dict[str, Any] = {}
    for condition in names:
        degraded = {name: conditions(widths[name])[condition](image) for name, image in images.items()}
        report[condition] = {
            system: pair_figures({name: embed(image) for name, image in degraded.items()})
            for system, embed in pipelines.items()
        }
    return {"robustness": report, "robustness_unavailable": UNAVAILABLE}
