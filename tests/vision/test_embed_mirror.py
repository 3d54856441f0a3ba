"""``models.embed_mirror``: a face's embedding as the mean of its chip's and the chip's mirror image's."""

from __future__ import annotations

import numpy as np
from embedder_support import MODELS_DIR

from device.config import DetectionSection, ModelsSection
from device.evaluation import fixtures
from device.models.accelerator import open_model
from device.vision.detect import FaceDetector
from device.vision.embed import FaceEmbedder
from device.vision.faces import FaceAnalyzer
from device.vision.shape_predictor5 import load_landmark_aligner


def test_the_mirrored_embedding_is_the_mean_of_both_views_and_the_same_for_a_mirror_image(
    face_images: object,
) -> None:
    models = ModelsSection(dir=MODELS_DIR, accelerator="cpu", cpu_variant="float", cpu_threads=1)
    model = open_model(models, "dlib_resnet_v1")
    plain, mirrored = FaceEmbedder(model), FaceEmbedder(model, mirror=True)
    analyzer = FaceAnalyzer(
        FaceDetector(open_model(models, "blazeface_full_range"), DetectionSection()),
        plain,
        load_landmark_aligner(MODELS_DIR),
    )
    chip = analyzer.largest(fixtures.load_rgb("obama.jpg")).chip  # type: ignore[union-attr]
    flipped = np.ascontiguousarray(chip[:, ::-1])
    one, other = plain.embed(np.stack([chip, flipped]))
    mean = (one + other) / np.linalg.norm(one + other)
    (both,) = mirrored.embed(chip[None])
    np.testing.assert_allclose(both, mean, atol=1e-6)
    np.testing.assert_allclose(mirrored.embed(flipped[None])[0], both, atol=1e-6)
    assert float(one @ other) < 0.999  # the two views differ: the mean is not the plain embedding
    assert abs(float(np.linalg.norm(both)) - 1.0) < 1e-6


def test_grey_only_mirroring_averages_grey_chips_and_leaves_colour_ones(face_images: object) -> None:
    models = ModelsSection(dir=MODELS_DIR, accelerator="cpu", cpu_variant="float", cpu_threads=1)
    model = open_model(models, "dlib_resnet_v1")
    plain, everything = FaceEmbedder(model), FaceEmbedder(model, mirror=True)
    grey_only = FaceEmbedder(model, mirror_grey=True)
    analyzer = FaceAnalyzer(
        FaceDetector(open_model(models, "blazeface_full_range"), DetectionSection()),
        plain,
        load_landmark_aligner(MODELS_DIR),
    )
    colour = analyzer.largest(fixtures.load_rgb("obama.jpg")).chip  # type: ignore[union-attr]
    grey = np.repeat(colour.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    chips = np.stack([colour, grey])
    np.testing.assert_array_equal(grey_only.mirrored(chips), [False, True])
    vectors = grey_only.embed(chips)
    np.testing.assert_allclose(vectors[0], plain.embed(colour[None])[0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], everything.embed(grey[None])[0], atol=1e-6)
    assert float(vectors[1] @ plain.embed(grey[None])[0]) < 0.9999  # the grey one did change
