"""The embedder recipe's folds are exact: the rebuilt graph computes what dlib's layers compute."""

from __future__ import annotations

import numpy as np
import pytest
from embedder_support import build_module

dlib_resnet = build_module("dlib_resnet")
recipe = build_module("build_embedder")


def random_conv(rng: np.random.Generator, out: int, inp: int, k: int, stride: int, padding: int):  # type: ignore[no-untyped-def]
    weights = rng.normal(0, 0.2, size=(out, inp, k, k)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=out).astype(np.float32)
    return dlib_resnet.Conv(weights, bias, stride, padding)


def test_affine_folded_into_convolution_gives_the_same_output() -> None:
    rng = np.random.default_rng(1)
    conv = random_conv(rng, 6, 4, 3, 1, 1)
    affine = dlib_resnet.Affine(
        rng.uniform(0.5, 2, 6).astype(np.float32), rng.normal(0, 1, 6).astype(np.float32)
    )
    x = rng.normal(0, 1, size=(2, 9, 9, 4)).astype(np.float32)
    expected = dlib_resnet._affine(dlib_resnet._conv(x, conv), affine)
    folded = dlib_resnet._conv(x, recipe.fold_affine(conv, affine))
    assert np.allclose(folded, expected, atol=1e-5)


def test_input_normalisation_folded_into_unpadded_convolution_takes_raw_pixels() -> None:
    rng = np.random.default_rng(2)
    conv = random_conv(rng, 5, 3, 7, 2, 0)
    mean = (122.782, 117.001, 104.298)
    pixels = rng.integers(0, 256, size=(1, 23, 23, 3)).astype(np.float32)
    normalised = (pixels - np.asarray(mean, np.float32)) / 256.0
    expected = dlib_resnet._conv(normalised, conv)
    folded = dlib_resnet._conv(pixels, recipe.fold_input_normalisation(conv, mean))
    assert np.allclose(folded, expected, atol=1e-4)


def test_normalisation_is_not_folded_into_a_padded_convolution() -> None:
    conv = random_conv(np.random.default_rng(3), 2, 3, 3, 1, 1)
    # Padding would add zeros of the *normalised* input, which raw pixels cannot express.
    with pytest.raises(ValueError, match="unpadded"):
        recipe.fold_input_normalisation(conv, (1.0, 2.0, 3.0))
