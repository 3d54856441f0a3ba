"""The shipped embedder models against dlib itself, on real fixture faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from embedder_support import MODELS_DIR, build_module
from numpy.typing import NDArray

from device.config import DetectionSection
from device.evaluation.embedder import (
    DETECTOR,
    EMBEDDER,
    IMPOSTOR,
    OBAMAS,
    RESNET_FILE,
    OracleFace,
    dlib_model_file,
    dlib_oracle,
    embedder_metrics,
    load_eval_images,
    open_variant,
    our_chips,
    row_cosines,
    same_face,
)
from device.types import RgbImage
from device.vision.align import CHIP_TEMPLATE
from device.vision.detect import FaceDetector
from device.vision.embed import FaceEmbedder, cosine, l2_normalise
from device.vision.shape_predictor5 import load_landmark_aligner

pytestmark = pytest.mark.oracle
pytest.importorskip("dlib", reason="the oracle needs dlib-bin (dev extra)")

ORACLE_IMAGES = (*OBAMAS, IMPOSTOR, "sample1.jpg", "sample6.jpg")


@pytest.fixture(scope="session")
def oracle_images(face_images) -> dict[str, RgbImage]:  # type: ignore[no-untyped-def]
    return load_eval_images(ORACLE_IMAGES)


@pytest.fixture(scope="session")
def oracle(oracle_images: dict[str, RgbImage]) -> list[OracleFace]:
    faces = dlib_oracle(oracle_images)
    assert len(faces) >= 8, "dlib should find every fixture face"
    return faces


@pytest.fixture(scope="session")
def float_embedder() -> FaceEmbedder:
    return FaceEmbedder(open_variant(MODELS_DIR, EMBEDDER, "float"))


@pytest.fixture(scope="session")
def int8_embedder() -> FaceEmbedder:
    return FaceEmbedder(open_variant(MODELS_DIR, EMBEDDER, "int8"))


def chips_of(faces: list[OracleFace]) -> NDArray[np.uint8]:
    return np.stack([face.chip for face in faces])


def descriptors_of(faces: list[OracleFace]) -> NDArray[np.float32]:
    return np.stack([face.descriptor for face in faces])


def weights_file() -> Path:
    return dlib_model_file(RESNET_FILE)


def test_dat_reader_finds_dlib_network_and_its_input_mean() -> None:
    net = build_module("dlib_resnet").load_dlib_resnet(weights_file())
    assert len(net.units) == 14
    assert [u.conv_a.weights.shape[0] for u in net.units] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert sum(u.shortcut_pool is not None for u in net.units) == 4
    assert net.fc.shape == (256, 128)
    assert np.allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)


def test_dat_reader_refuses_a_truncated_file(tmp_path: Path) -> None:
    dlib_resnet = build_module("dlib_resnet")
    truncated = tmp_path / "cut.dat"
    truncated.write_bytes(weights_file().read_bytes()[:5_000_000])
    with pytest.raises(dlib_resnet.DatFormatError):
        dlib_resnet.load_dlib_resnet(truncated)


def test_numpy_reference_reproduces_dlib_descriptor(oracle: list[OracleFace]) -> None:
    dlib_resnet = build_module("dlib_resnet")
    net = dlib_resnet.load_dlib_resnet(weights_file())
    faces = oracle[:2]
    ours = l2_normalise(dlib_resnet.reference_descriptors(net, chips_of(faces)))
    assert row_cosines(ours, descriptors_of(faces)).min() > 0.99999


def test_float_model_agrees_with_dlib_on_dlib_chips(
    oracle: list[OracleFace], float_embedder: FaceEmbedder
) -> None:
    cosines = row_cosines(float_embedder.embed(chips_of(oracle)), descriptors_of(oracle))
    assert cosines.mean() >= 0.999
    assert cosines.min() >= 0.995


def test_int8_model_agrees_with_float(
    oracle: list[OracleFace], float_embedder: FaceEmbedder, int8_embedder: FaceEmbedder
) -> None:
    chips = chips_of(oracle)
    assert row_cosines(int8_embedder.embed(chips), float_embedder.embed(chips)).mean() >= 0.97


@pytest.mark.parametrize("variant", ["float", "int8"])
def test_blazeface_our_alignment_and_model_agree_with_dlib_end_to_end(
    oracle_images: dict[str, RgbImage],
    oracle: list[OracleFace],
    float_embedder: FaceEmbedder,
    int8_embedder: FaceEmbedder,
    variant: str,
) -> None:
    detector = FaceDetector(open_variant(MODELS_DIR, DETECTOR, "float"), DetectionSection())
    pairs = our_chips(oracle_images, oracle, detector, load_landmark_aligner(MODELS_DIR))
    found = [p for p in pairs if p.chip is not None]
    assert len(found) == len(pairs), "BlazeFace should find every face dlib finds here"
    embedder = float_embedder if variant == "float" else int8_embedder
    ours = embedder.embed(np.stack([p.chip for p in found if p.chip is not None]))
    cosines = row_cosines(ours, descriptors_of([p.oracle for p in found]))
    assert cosines.mean() >= 0.995, "issue 15: dlib's alignment brings end-to-end agreement to 0.995"
    assert max(p.alignment_error_px or 0.0 for p in found) < 4.0


def test_blazeface_keypoints_land_on_the_documented_template_on_dlib_chips(
    oracle_images: dict[str, RgbImage], oracle: list[OracleFace]
) -> None:
    detector = FaceDetector(open_variant(MODELS_DIR, DETECTOR, "float"), DetectionSection())
    on_chip = []
    for face in oracle:
        match = same_face(face, detector.detect(oracle_images[face.image]))
        assert match is not None
        points = match.keypoints[:4].astype(np.float64)
        on_chip.append(points @ face.chip_matrix[:, :2].T + face.chip_matrix[:, 2])
    offsets = np.linalg.norm(np.mean(on_chip, axis=0) - CHIP_TEMPLATE, axis=1)
    assert offsets.max() < 4.0, f"template off by {offsets.round(1)} px on these faces"


def test_same_person_is_closer_than_another_person(
    oracle: list[OracleFace], float_embedder: FaceEmbedder, int8_embedder: FaceEmbedder
) -> None:
    obama = [f for f in oracle if f.image in OBAMAS]
    biden = [f for f in oracle if f.image == IMPOSTOR]
    assert len(obama) == 3 and len(biden) == 1
    for embedder in (float_embedder, int8_embedder):
        obama_vectors = embedder.embed(chips_of(obama))
        biden_vector = embedder.embed(chips_of(biden))[0]
        genuine = [cosine(obama_vectors[i], obama_vectors[j]) for i in range(3) for j in range(i + 1, 3)]
        impostor = [cosine(v, biden_vector) for v in obama_vectors]
        assert min(genuine) > max(impostor) + 0.05


def test_embeddings_are_unit_vectors_one_per_chip(
    oracle: list[OracleFace], float_embedder: FaceEmbedder
) -> None:
    vectors = float_embedder.embed(chips_of(oracle[:2]))
    assert vectors.shape == (2, 128) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float_embedder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((150, 150, 3), np.uint8), np.zeros((1, 112, 112, 3), np.uint8), np.zeros((1, 150, 150, 3))],
    ids=["no batch axis", "wrong size", "not uint8"],
)
def test_embedder_rejects_what_is_not_a_chip_batch(
    float_embedder: FaceEmbedder, bad: NDArray[np.uint8]
) -> None:
    with pytest.raises(ValueError, match="chips"):
        float_embedder.embed(bad)


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_evaluation_reports_issue_keys_meeting_thresholds(face_images) -> None:  # type: ignore[no-untyped-def]
    metrics = embedder_metrics(MODELS_DIR, image_names=(*OBAMAS, IMPOSTOR), latency_runs=3)
    assert metrics["cosine_vs_dlib_mean"] >= 0.999 and metrics["cosine_vs_dlib_min"] >= 0.995
    assert metrics["cosine_int8_vs_float_mean"] >= 0.97
    assert metrics["cosine_end_to_end_vs_dlib_mean"] >= 0.995
    assert metrics["chip_alignment_error_px_mean"] <= 2.0
    assert metrics["chip_alignment_error_px_mean_int8_detector"] <= 2.0
    assert (
        metrics["cosine_end_to_end_all_int8_vs_dlib_mean"]
        >= metrics["cosine_end_to_end_vs_dlib_mean"] - 0.002
    )
    assert (
        abs(metrics["cosine_end_to_end_int8_vs_dlib_mean"] - metrics["cosine_end_to_end_vs_dlib_mean"])
        <= 0.002
    )
    assert metrics["genuine_cosine_min"] > metrics["impostor_cosine_max"]
    assert metrics["int8_genuine_cosine_min"] > metrics["int8_impostor_cosine_max"]
    assert metrics["dlib_resnet_v1_latency_float_ms"] > 0 and metrics["dlib_resnet_v1_latency_int8_ms"] > 0
    assert metrics["embedder_faces_end_to_end"] == metrics["embedder_faces_dlib"] == 4
