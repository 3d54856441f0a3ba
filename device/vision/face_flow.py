"""Points followed across a visit's samples by their image content (pyramidal Lucas-Kanade optical flow).

The geometry cue asks whether the face moved as a plane. Landmarks from the face mesh cannot answer that:
the mesh network fits a 3-D face to whatever it sees, so the landmarks of a turning poster move like a
turning head's (measured: homography/similarity residual ratio about 0.5 for a flat poster, as for a head).
Corners tracked by their pixels move as the surface they are printed on: on a poster they follow one
homography to within the tracker's noise, on a head the nose and the cheeks part ways.

The samples of a visit are crops ("contexts") of different frames at different places; each pair is laid
on one canvas in frame coordinates so the tracker sees the motion as it was in the frame. The mesh gives
the tracker its first guess (the similarity that moves one sample's landmarks onto the next one's), so a
face that moved a lot between two samples is still found.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from device.types import Box, RgbImage

Points = NDArray[np.float32]  # (n, 2) in frame pixels

# Corners are taken in the central part of the face box only: a real person's background is another
# plane, and so is the wall behind a cut-out face, so either would decide the question for the wrong reason.
FACE_SHARE = 0.8
MAX_CORNERS = 48
CORNER_QUALITY = 0.01
CORNER_SPACING = 1 / 25  # of the face's side: spread the corners over the face instead of one eyebrow
# After the landmark similarity has moved the first sample, what is left to find is a few pixels.
WINDOW_PX = 15
PYRAMID_LEVELS = 2
# A point is kept while tracking it forward and back lands within this many pixels of where it started;
# a point that slid (an occluding cheek, a reflection) fails this and is dropped instead of bending the fit.
MAX_FORWARD_BACKWARD_PX = 1.0
# The tracker sees the faces and this much around them (their boxes widened about the centre): enough for
# its window at the face's edge, and a seventh of the area of the context PAD keeps.
CANVAS_MARGIN = 1.5
MIN_POINTS = 8  # a homography has 8 degrees of freedom: fewer points than this fit anything
# Tracking runs on the face blurred (and a large face shrunk to this side first, which bounds the cost): a
# print's halftone and a screen's pixel grid, resampled by the camera at every distance, make moire that
# slides over the surface instead of moving with it (on the rendered print clips, corners picked on the
# dots left the homography at ratio 0.9). Eyes, nostrils and the mouth survive a blur of 1.5 px; dots of a
# few pixels do not. Shrinking further costs precision: at a 96 px face, flat posters read up to 0.32
# against 0.25 at 192 px (README, PAD).
TRACKING_FACE_SIDE = 192.0
TRACKING_BLUR_SIGMA = 1.5


class PlacedCrop(Protocol):
    """A crop of a frame and where it sat (a PAD sample is one)."""

    @property
    def context(self) -> RgbImage: ...

    @property
    def box(self) -> Box: ...

    @property
    def origin(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Correspondence:
    """The same surface points in the first sample and in a later one (frame pixels)."""

    first: Points
    later: Points


def grey(crop: PlacedCrop) -> NDArray[np.uint8]:
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(crop.context), cv2.COLOR_RGB2GRAY), np.uint8)


def corners_on_the_face(crop: PlacedCrop) -> Points:
    """Well-textured points in the central part of the face box, in frame pixels (may be empty); chosen
    on the picture the tracker sees, so they are the face's features rather than a print's dots."""
    scale = tracking_scale(crop)
    x0, y0, x1, y1 = face_region(crop)
    left, top = max(x0, crop.origin[0]), max(y0, crop.origin[1])
    region = grey(crop)[top - crop.origin[1] : max(top, y1 - crop.origin[1]),
                        left - crop.origin[0] : max(left, x1 - crop.origin[0])]  # fmt: skip
    if region.size == 0:
        return np.zeros((0, 2), np.float32)
    image = for_tracking(np.ascontiguousarray(region), scale)
    box = crop.box
    side = max(box.x1 - box.x0, box.y1 - box.y0) * scale
    half = side * FACE_SHARE / 2
    centre_x = ((box.x0 + box.x1) / 2 + crop.origin[0] - left) * scale
    centre_y = ((box.y0 + box.y1) / 2 + crop.origin[1] - top) * scale
    mask = np.zeros_like(image)
    mask[max(0, int(centre_y - half)) : max(0, int(centre_y + half)),
         max(0, int(centre_x - half)) : max(0, int(centre_x + half))] = 255  # fmt: skip
    found = cv2.goodFeaturesToTrack(
        image, MAX_CORNERS, CORNER_QUALITY, max(2.0, side * CORNER_SPACING), mask=mask
    )
    if found is None:
        return np.zeros((0, 2), np.float32)
    return found.reshape(-1, 2).astype(np.float32) / scale + np.array([left, top], np.float32)


def tracking_scale(crop: PlacedCrop) -> float:
    """Frame pixels to tracking pixels: the face at ``TRACKING_FACE_SIDE`` (never enlarged)."""
    side = max(crop.box.x1 - crop.box.x0, crop.box.y1 - crop.box.y0, 1.0)
    return min(1.0, TRACKING_FACE_SIDE / side)


def for_tracking(canvas: NDArray[np.uint8], scale: float) -> NDArray[np.uint8]:
    shrunk = canvas
    if scale < 1.0:
        size = (max(1, round(canvas.shape[1] * scale)), max(1, round(canvas.shape[0] * scale)))
        shrunk = np.asarray(cv2.resize(canvas, size, interpolation=cv2.INTER_AREA), np.uint8)
    return np.asarray(cv2.GaussianBlur(shrunk, (0, 0), TRACKING_BLUR_SIGMA), np.uint8)


def face_region(crop: PlacedCrop) -> tuple[int, int, int, int]:
    """The face box widened by ``CANVAS_MARGIN`` about its centre, in frame pixels (x0, y0, x1, y1)."""
    box = crop.box
    half_w, half_h = (box.x1 - box.x0) * CANVAS_MARGIN / 2, (box.y1 - box.y0) * CANVAS_MARGIN / 2
    centre_x, centre_y = (box.x0 + box.x1) / 2 + crop.origin[0], (box.y0 + box.y1) / 2 + crop.origin[1]
    return (
        int(centre_x - half_w),
        int(centre_y - half_h),
        int(np.ceil(centre_x + half_w)),
        int(np.ceil(centre_y + half_h)),
    )


def shared_canvas(
    first: PlacedCrop, second: PlacedCrop
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.float32]]:
    """Both crops, grey, on one canvas that covers both faces (not their whole context: the cost of the
    tracker's pyramids grows with the canvas); and the canvas's origin in the frame."""
    regions = [face_region(crop) for crop in (first, second)]
    left, top = min(r[0] for r in regions), min(r[1] for r in regions)
    right, bottom = max(r[2] for r in regions), max(r[3] for r in regions)
    canvases = []
    for crop in (first, second):
        canvas = np.zeros((bottom - top, right - left), np.uint8)
        image = grey(crop)
        # the part of the crop that falls on the canvas, in frame pixels
        x0, y0 = max(left, crop.origin[0]), max(top, crop.origin[1])
        x1 = min(right, crop.origin[0] + image.shape[1])
        y1 = min(bottom, crop.origin[1] + image.shape[0])
        if x1 > x0 and y1 > y0:
            canvas[y0 - top : y1 - top, x0 - left : x1 - left] = image[
                y0 - crop.origin[1] : y1 - crop.origin[1], x0 - crop.origin[0] : x1 - crop.origin[0]
            ]
        canvases.append(canvas)
    return canvases[0], canvases[1], np.array([left, top], np.float32)


def landmark_similarity(landmarks_from: Points, landmarks_to: Points) -> NDArray[np.float64]:
    """The 2-D rigid + scale motion (2x3) that moves one sample's landmarks onto the next one's."""
    matrix, _ = cv2.estimateAffinePartial2D(landmarks_from, landmarks_to, method=cv2.LMEDS)
    if matrix is None:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return np.asarray(matrix, np.float64)


def on_canvas(
    motion: NDArray[np.float64], canvas_origin: NDArray[np.float32], scale: float
) -> NDArray[np.float64]:
    """``motion`` (frame pixels) as it acts on a canvas whose pixel c is frame pixel c / scale + origin."""
    linear, shift = motion[:, :2], motion[:, 2]
    origin = canvas_origin.astype(np.float64)
    return np.column_stack([linear, scale * (linear @ origin + shift - origin)])


def lucas_kanade(
    source: NDArray[np.uint8], target: NDArray[np.uint8], points: Points, guess: Points
) -> tuple[Points, NDArray[np.bool_]]:
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(
        source,
        target,
        points.reshape(-1, 1, 2),
        guess.reshape(-1, 1, 2).copy(),
        winSize=(WINDOW_PX, WINDOW_PX),
        maxLevel=PYRAMID_LEVELS,
        criteria=criteria,
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
    )
    return moved.reshape(-1, 2).astype(np.float32), status.reshape(-1).astype(bool)


def follow(crops: Sequence[PlacedCrop], landmarks: Sequence[Points]) -> list[Correspondence]:
    """Corners of the first crop followed from crop to crop; one correspondence per later crop, for the
    points still held there (none once fewer than ``MIN_POINTS`` are left)."""
    if len(crops) < 2 or len(landmarks) != len(crops):
        return []
    start = corners_on_the_face(crops[0])
    scale = tracking_scale(crops[0])
    current, alive = start.copy(), np.ones(len(start), bool)
    found: list[Correspondence] = []
    for (first, second), (marks_first, marks_second) in zip(
        itertools.pairwise(crops), itertools.pairwise(landmarks), strict=True
    ):
        source, target, canvas_origin = shared_canvas(first, second)
        source, target = for_tracking(source, scale), for_tracking(target, scale)
        # The first sample is first moved as its landmarks moved, so the tracker only has to find what a
        # similarity does not explain (a face that came closer is otherwise too changed for its window).
        motion = on_canvas(landmark_similarity(marks_first, marks_second), canvas_origin, scale)
        size = (target.shape[1], target.shape[0])
        moved_source = np.asarray(cv2.warpAffine(source, motion, size, flags=cv2.INTER_LINEAR), np.uint8)
        linear, shift = motion[:, :2].astype(np.float32), motion[:, 2].astype(np.float32)
        here = (((current - canvas_origin) * scale) @ linear.T + shift).astype(np.float32)
        there, forward_ok = lucas_kanade(moved_source, target, here, here)
        back, backward_ok = lucas_kanade(target, moved_source, there, here)
        returned = np.linalg.norm(back - here, axis=1) < MAX_FORWARD_BACKWARD_PX
        alive &= forward_ok & backward_ok & returned
        current = there / scale + canvas_origin
        if alive.sum() < MIN_POINTS:
            break
        found.append(Correspondence(start[alive], current[alive]))
    return found
