"""A short synthetic entrance clip made from the pinned fixture photos, for the demo, tests and benchmark.

Script (15 fps, 640x480 by default): an empty hallway; person A walks in towards the camera (the face
grows and drifts to the centre) and leaves; the empty hallway again, long enough for the tracker to end
the visit; person B walks in and leaves; the empty hallway. Each person is cut out of a different photo
than the ones a demo enrols from, so a recognition in the demo is a real match, not a copy.

The hallway is drawn, not photographed, and is exactly the same in every frame, so the motion gate sees a
truly still scene between visits. The clip is written as Motion-JPEG (each frame coded on its own, so
identical frames decode to identical pixels), which OpenCV writes without any external codec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from device.errors import UserError
from device.types import Detection, RgbImage

HEAD_WIDTH_FACTOR = 2.4  # cut-out width relative to the detected face box: hair, ears, some shoulder
HEAD_TOP_FACTOR = 0.9  # room above the face box (forehead, hair)
HEAD_BOTTOM_FACTOR = 1.5  # room below it (chin, neck)
FEATHER_FRACTION = 0.08  # soft cut-out edge, as a fraction of the cut-out width


class ClipError(UserError):
    """The clip cannot be made (a photo without a face, an encoder OpenCV lacks)."""


@dataclass(frozen=True)
class Walk:
    """One visit: who, and how their face moves (face widths in px, centre x as a fraction of the width)."""

    label: str
    photo: RgbImage
    frames: int = 36
    start_face_px: float = 80.0
    end_face_px: float = 150.0
    start_x: float = 0.2
    end_x: float = 0.5
    eye_line_y: float = 0.42  # where the face centre sits, as a fraction of the height


@dataclass(frozen=True)
class VisitSpan:
    label: str
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class DemoClip:
    path: Path
    fps: float
    size: tuple[int, int]
    frames: int
    visits: tuple[VisitSpan, ...]


def hallway(width: int, height: int) -> RgbImage:
    """A plain, deterministic entrance: wall, floor, a door frame, a light switch."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    wall = 200.0 - 40.0 * ys  # light falls off towards the floor
    image = np.empty((height, width, 3), np.float32)
    image[:] = np.stack([wall * 0.95, wall * 0.92, wall * 0.85], axis=-1)
    floor_top = int(height * 0.78)
    image[floor_top:] = (96.0, 82.0, 70.0)
    door_x0, door_x1 = int(width * 0.62), int(width * 0.9)
    image[int(height * 0.12) : floor_top, door_x0:door_x1] = (150.0, 120.0, 90.0)
    image[int(height * 0.12) : floor_top, door_x0 + 10 : door_x1 - 10] = (120.0, 94.0, 68.0)
    image[int(height * 0.45) : int(height * 0.5), door_x0 + 18 : door_x0 + 30] = (210.0, 200.0, 150.0)
    image[int(height * 0.4) : int(height * 0.46), int(width * 0.08) : int(width * 0.11)] = 235.0
    rgb: RgbImage = np.clip(image, 0, 255).astype(np.uint8)
    return rgb


def head_cutout(photo: RgbImage, face: Detection) -> tuple[RgbImage, NDArray[np.float32], float]:
    """The head around ``face`` (padded with edge pixels where the photo ends), a soft elliptical alpha
    mask for it, and the face box width in the cut-out's pixels."""
    box = face.box
    width = box.width * HEAD_WIDTH_FACTOR
    cx = (box.x0 + box.x1) / 2.0
    x0 = round(cx - width / 2.0)
    x1 = round(cx + width / 2.0)
    y0 = round(box.y0 - box.height * HEAD_TOP_FACTOR)
    y1 = round(box.y1 + box.height * HEAD_BOTTOM_FACTOR)
    height, width_px = photo.shape[:2]
    pad = max(0, -x0, -y0, x1 - width_px, y1 - height)
    padded = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else photo
    crop: RgbImage = np.ascontiguousarray(padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad], dtype=np.uint8)
    rows, cols = crop.shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    ellipse = ((xx - cols / 2.0) / (cols / 2.0)) ** 2 + ((yy - rows / 2.0) / (rows / 2.0)) ** 2
    feather = max(1e-3, FEATHER_FRACTION * 2.0)
    alpha = np.clip((1.0 - ellipse) / feather, 0.0, 1.0).astype(np.float32)
    return crop, alpha, box.width


def paste(frame: RgbImage, cutout: RgbImage, alpha: NDArray[np.float32], left: int, top: int) -> None:
    """Alpha-blends ``cutout`` into ``frame`` in place (clipped at the frame's edges)."""
    height, width = frame.shape[:2]
    rows, cols = cutout.shape[:2]
    fx0, fy0 = max(0, left), max(0, top)
    fx1, fy1 = min(width, left + cols), min(height, top + rows)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    part = cutout[fy0 - top : fy1 - top, fx0 - left : fx1 - left].astype(np.float32)
    weight = alpha[fy0 - top : fy1 - top, fx0 - left : fx1 - left, None]
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = np.clip(region * (1.0 - weight) + part * weight, 0, 255).astype(np.uint8)


def walk_frames(background: RgbImage, walk: Walk, face: Detection) -> Iterator[RgbImage]:
    cutout, alpha, face_px = head_cutout(walk.photo, face)
    # Shrink the photo once to the largest size the walk needs; each frame then resizes a small image.
    largest = max(walk.start_face_px, walk.end_face_px) / face_px
    if largest < 1.0:
        size = (max(2, round(cutout.shape[1] * largest)), max(2, round(cutout.shape[0] * largest)))
        face_px *= size[0] / cutout.shape[1]
        cutout = np.asarray(cv2.resize(cutout, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        alpha = np.asarray(cv2.resize(alpha, size, interpolation=cv2.INTER_AREA), dtype=np.float32)
    height, width = background.shape[:2]
    for index in range(walk.frames):
        t = index / max(1, walk.frames - 1)
        eased = t * t * (3.0 - 2.0 * t)  # starts and stops gently, like a person slowing at a door
        target_px = walk.start_face_px + (walk.end_face_px - walk.start_face_px) * eased
        scale = target_px / face_px
        size = (max(2, round(cutout.shape[1] * scale)), max(2, round(cutout.shape[0] * scale)))
        # Area averaging when shrinking avoids aliasing a real lens would not make.
        scaled = np.asarray(cv2.resize(cutout, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        scaled_alpha = np.asarray(cv2.resize(alpha, size, interpolation=cv2.INTER_AREA), dtype=np.float32)
        centre_x = (walk.start_x + (walk.end_x - walk.start_x) * eased) * width
        centre_y = walk.eye_line_y * height
        left = round(centre_x - size[0] / 2.0)
        face_centre_in_cutout = (HEAD_TOP_FACTOR + 0.5) / (HEAD_TOP_FACTOR + 1.0 + HEAD_BOTTOM_FACTOR)
        top = round(centre_y - size[1] * face_centre_in_cutout)
        frame = background.copy()
        paste(frame, scaled, scaled_alpha, left, top)
        yield frame


def script_frames(
    background: RgbImage,
    walks: Sequence[tuple[Walk, Detection]],
    *,
    empty_frames: int,
) -> tuple[list[RgbImage], list[VisitSpan]]:
    """The whole script in memory (for tests that feed frames directly; ~0.9 MB per 640x480 frame)."""
    spans: list[VisitSpan] = []
    frames = list(iter_script_frames(background, walks, spans, empty_frames=empty_frames))
    return frames, spans


def iter_script_frames(
    background: RgbImage,
    walks: Sequence[tuple[Walk, Detection]],
    spans: list[VisitSpan],
    *,
    empty_frames: int,
) -> Iterator[RgbImage]:
    """The frames one by one (a clip is never held in memory); ``spans`` is filled in as they pass."""
    count = 0
    for _ in range(empty_frames):
        count += 1
        yield background
    for walk, face in walks:
        first = count
        for frame in walk_frames(background, walk, face):
            count += 1
            yield frame
        spans.append(VisitSpan(walk.label, first, count - 1))
        for _ in range(empty_frames):
            count += 1
            yield background


def write_mjpeg(
    path: Path, frames: Iterable[RgbImage], fps: float, size: tuple[int, int], quality: int = 90
) -> int:
    """Writes the frames; returns how many were written."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise ClipError(f"OpenCV cannot write Motion-JPEG to {path}")
    written = 0
    try:
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
            written += 1
    finally:
        writer.release()
    return written


def largest_face(detect: Callable[[RgbImage], list[Detection]], photo: RgbImage, label: str) -> Detection:
    faces = detect(photo)
    if not faces:
        raise ClipError(f"no face found in the photo for {label}")
    return max(faces, key=lambda detection: detection.box.area)


def make_clip(
    path: Path,
    walks: Sequence[Walk],
    detect: Callable[[RgbImage], list[Detection]],
    *,
    fps: float = 15.0,
    size: tuple[int, int] = (640, 480),
    empty_frames: int = 15,
) -> DemoClip:
    """Writes the clip (empty, walk, empty, walk, ..., empty) and says where each visit is."""
    background = hallway(*size)
    located = [(walk, largest_face(detect, walk.photo, walk.label)) for walk in walks]
    spans: list[VisitSpan] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter_script_frames(background, located, spans, empty_frames=empty_frames)
    written = write_mjpeg(path, frames, fps, size)
    return DemoClip(path, fps, size, written, tuple(spans))


def demo_walks(resident: RgbImage, visitor: RgbImage) -> list[Walk]:
    """The demo's two visits: the resident from the left, the visitor from the right."""
    return [
        Walk("resident", resident, start_x=0.25, end_x=0.45),
        Walk("visitor", visitor, start_x=0.75, end_x=0.55),
    ]
