"""Face embedding: 150x150 RGB chips -> 128-d unit vectors with dlib's ResNet, rebuilt as TFLite.

The shipped models (models/dlib_resnet_v1) take raw RGB pixel values 0..255 as float32: dlib's input
normalisation ((pixel - [122.782, 117.001, 104.298]) / 256) is folded into their first convolution, so
the int8 file's uint8 input holds the pixels exactly. Their output is dlib's descriptor, which is not unit
length; matching compares directions, so it is L2-normalised here.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from device.vision.align import CHIP_SIZE
from device.vision.detect import is_grey

DESCRIPTOR_SIZE = 128


class EmbeddingModel(Protocol):
    """What the embedder needs from device.models.accelerator's InferenceModel."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]: ...


class FaceEmbedder:
    """Chips -> unit vectors; with ``mirror``, each vector is the mean of the chip's and its mirror image's.

    dlib's ResNet learnt from chips and their mirror images alike, so a face and its mirror image are the
    same person to it; averaging the two cancels part of what pose and light do to one side of the face
    (issue 28, measured on ../shared/lfw in README). It costs a second inference per face; with
    ``mirror_grey`` only grey chips (a NoIR camera at night) pay it, where it closes most of the gap to
    colour.
    """

    def __init__(self, model: EmbeddingModel, *, mirror: bool = False, mirror_grey: bool = False) -> None:
        shape = tuple(model.input_shape)
        if shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"embedder model input must be (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), has {shape}")
        self.model = model
        self.mirror = mirror
        self.mirror_grey = mirror_grey
        # The shipped files have a static batch of one (the Edge TPU needs static shapes).
        self._batch = max(1, int(shape[0]))

    def mirrored(self, chips: NDArray[np.uint8]) -> NDArray[np.bool_]:
        """Which chips get mirror averaging."""
        if self.mirror:
            return np.ones(len(chips), dtype=bool)
        if self.mirror_grey:
            return np.array([is_grey(chip) for chip in chips], dtype=bool)
        return np.zeros(len(chips), dtype=bool)

    def embed(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float32 unit vectors."""
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ValueError(
                f"expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8 RGB chips, got {chips.dtype} {chips.shape}"
            )
        vectors = l2_normalise(self.descriptors(chips))
        chosen = np.flatnonzero(self.mirrored(chips))
        if chosen.size:
            # Each view normalised first, so that neither outweighs the other.
            flipped = l2_normalise(self.descriptors(np.ascontiguousarray(chips[chosen][:, :, ::-1])))
            vectors[chosen] = l2_normalise(vectors[chosen] + flipped)
        return vectors

    def descriptors(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """dlib's raw descriptors (not unit length), one inference per chip (static batch)."""
        vectors = np.empty((len(chips), DESCRIPTOR_SIZE), dtype=np.float32)
        for start in range(0, len(chips), self._batch):
            part = chips[start : start + self._batch].astype(np.float32)
            count = len(part)
            if count < self._batch:
                part = np.concatenate([part, np.zeros((self._batch - count, *part.shape[1:]), np.float32)])
            descriptors = np.asarray(self.model.run(part)[0], dtype=np.float32).reshape(self._batch, -1)
            if descriptors.shape[1] != DESCRIPTOR_SIZE:
                raise ValueError(f"embedder model gave {descriptors.shape[1]} values per face, expected 128")
            vectors[start : start + count] = descriptors[:count]
        return vectors


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True).astype(np.float32)
    # An all-zero output (it cannot come from a real face) stays zero rather than turning into NaN.
    normalised: NDArray[np.float32] = (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
    return normalised


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Cosine similarity of two vectors (unit vectors: their dot product)."""
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b)) / denominator if denominator > 0 else 0.0
