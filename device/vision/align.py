"""Face alignment: the detector's keypoints -> the 150x150 RGB chip dlib's embedder was trained on.

Since issue 15 the unit aligns with dlib's own 5-point landmarks (``device.vision.shape_predictor5``,
which uses ``warp_to_chip`` and ``similarity_transform`` from here); ``align_face`` below, from
BlazeFace's keypoints alone, is the earlier, cheaper method (chip 7 px from dlib's) and stays for
comparison.

dlib cuts its chips with ``get_face_chip(img, shape5, size=150, padding=0.25)`` from its own 5-point
landmarks (eye corners, base of the nose). The unit has BlazeFace's keypoints instead, so the chip is cut
by the similarity transform (rotation, uniform scale, shift; least squares) that puts BlazeFace's eye
centres, nose tip and mouth centre where they land, on average, on dlib's chips.

How ``CHIP_TEMPLATE`` was found (``models/build/derive_align_template.py`` redoes it): for each of the 23
fixture faces that both dlib and BlazeFace find, dlib's image -> chip mapping was rebuilt from
``get_face_chip_details`` (checked: warping with it reproduces dlib's chip to 0.4-0.5 grey levels mean
absolute difference; 2 where the face is over twice the chip size, as the two pyramids' filters differ),
BlazeFace's keypoints were mapped through it, averaged, and made left-right symmetric about the chip's
centre column. Mean positions before symmetrising: right eye (48.6, 47.6), left eye (100.8, 45.6),
nose tip (73.2, 79.6), mouth (76.4, 104.1); spread 3-7 px (pose). The ears are not used: BlazeFace places
them poorly on turned faces, and eyes + nose or eyes + mouth alone gave lower end-to-end agreement with
dlib (0.988, 0.989 vs 0.990). A template fitted to minimise the chip misalignment directly moved the
end-to-end cosine by under 0.001: what is left is the keypoints' own noise on turned faces.

Like dlib, a face much larger than the chip is first halved with a Gaussian pyramid (no aliasing), then
sampled bilinearly.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from device.types import RgbImage

CHIP_SIZE = 150
# (x, y) on the 150x150 chip, pixel-centre coordinates, in Keypoint order: right eye (image left),
# left eye, nose tip, mouth centre.
CHIP_TEMPLATE = np.array(
    [[48.4, 46.6], [100.6, 46.6], [74.5, 79.6], [74.5, 104.1]],
    dtype=np.float64,
)
USED_KEYPOINTS = 4
# Below this chip/image scale, halve the image first (what dlib's chip extraction does to avoid aliasing).
PYRAMID_BELOW_SCALE = 0.5


class AlignmentError(ValueError):
    """The keypoints cannot define a face chip (wrong shape, not finite, or collapsed to a point)."""


def similarity_transform(source: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """2x3 matrix of the least-squares similarity mapping ``source`` points onto ``target`` (Umeyama)."""
    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    src = source - source_mean
    dst = target - target_mean
    variance = float((src**2).sum()) / len(src)
    if variance < 1e-9:
        raise AlignmentError("keypoints coincide: no face geometry to align")
    covariance = dst.T @ src / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0  # a similarity never mirrors
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def chip_matrix(keypoints: NDArray[np.float32]) -> NDArray[np.float64]:
    """Image -> chip 2x3 similarity for a face's (6, 2) keypoints."""
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (6, 2) or not np.all(np.isfinite(points)):
        raise AlignmentError(f"expected (6, 2) finite keypoints, got {points.shape}")
    return similarity_transform(points[:USED_KEYPOINTS], CHIP_TEMPLATE)


def warp_to_chip(image_rgb: RgbImage, matrix: NDArray[np.float64], size: int = CHIP_SIZE) -> RgbImage:
    """Samples the chip; halves a crop around the face first while the chip is much smaller than it."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale >= PYRAMID_BELOW_SCALE:
        return np.asarray(cv2.warpAffine(image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR))
    # Only the part of the image the chip covers (plus a margin for the blur) is worth halving.
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inverse.T
    margin = 4.0 / scale
    height, width = image_rgb.shape[:2]
    x0 = int(max(0, np.floor(corners[:, 0].min() - margin)))
    y0 = int(max(0, np.floor(corners[:, 1].min() - margin)))
    x1 = int(min(width, np.ceil(corners[:, 0].max() + margin)))
    y1 = int(min(height, np.ceil(corners[:, 1].max() + margin)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((size, size, 3), dtype=np.uint8)  # the face lies wholly outside the image
    region = image_rgb[y0:y1, x0:x1]
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    while scale < PYRAMID_BELOW_SCALE and min(region.shape[:2]) >= 4:
        region = np.asarray(cv2.pyrDown(region), dtype=np.uint8)
        # pyrDown's pixel i is centred on the source's pixel 2i, so only the linear part changes.
        shifted[:, :2] *= 2.0
        scale *= 2.0
    return np.asarray(cv2.warpAffine(region, shifted, (size, size), flags=cv2.INTER_LINEAR))


def align_face(image_rgb: RgbImage, keypoints: NDArray[np.float32]) -> RgbImage:
    """The 150x150 RGB chip for the face with these (6, 2) keypoints, ready for the embedder."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise AlignmentError(
            f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}"
        )
    return warp_to_chip(image_rgb, chip_matrix(keypoints))
