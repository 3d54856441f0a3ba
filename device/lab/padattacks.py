"""The project's own presentation-attack material, rendered reproducibly from the fixture photos.

Species (ISO/IEC 30107-3 "presentation attack instrument species"):
- ``print``: a photo printed on paper: ink gamut, halftone dots (ordered dithering), paper white and its
  border, a slight bend (uneven light), tilt (perspective), a light gradient, camera blur and JPEG;
- ``screen``: a photo on a phone/tablet: RGB sub-pixel stripes (moire once resampled), display gamma, a
  black bezel, a glare band;
- ``cutout``: a print cut along the head (no border; halftone and ink remain);
- clips (``print_clip``, ``screen_clip``, ``cutout_clip``): a print, a phone or a cut-out held up in the
  entrance and moved towards the camera as one flat object (tilting a little).

Bona fide: the fixture photos themselves and the entrance clips of ``device.lab.democlip`` (a person cut
out of a photo, walking in). What this proves: that the mechanism of each cue reacts to the physical
traits it is built for (border/bezel, halftone/sub-pixel periodicity, planar motion). What it does not:
error rates in the field, on real prints, real screens, real cameras and real people.

Every render is a pure function of (photo, parameters); parameters are drawn from a seeded generator, so
``make pad-fixtures`` writes the same set every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from device.lab.democlip import Walk, hallway, largest_face, walk_frames, write_mjpeg
from device.types import Box, Detection, RgbImage

SPECIES_STILL = ("print", "screen", "cutout")
SPECIES_CLIP = ("print_clip", "screen_clip", "cutout_clip")
# Species added after the set's first figures draw their parameters from a generator of their own, so that
# the renders of the earlier species (and the settings chosen on them) stay byte for byte the same.
SPECIES_ADDED_LATER = ("cutout_clip",)


@dataclass(frozen=True)
class RenderParams:
    """One attack's physical traits (drawn by ``draw_params``)."""

    halftone_period: int  # px of the printed image per halftone cell (print) / sub-pixel triplet (screen)
    paper_white: float  # 0..255 level of the paper (print) or the display's white (screen)
    border: float  # border/bezel width as a fraction of the card's width
    tilt: float  # perspective: fraction of the width one side is shortened
    gradient: float  # light gradient strength across the card (0..1)
    gamma: float  # display gamma (screen)
    glare: float  # glare band strength (screen)
    jpeg: int  # camera JPEG quality


def draw_params(rng: np.random.Generator) -> RenderParams:
    return RenderParams(
        halftone_period=int(rng.integers(3, 6)),
        paper_white=float(rng.uniform(215, 250)),
        border=float(rng.uniform(0.06, 0.14)),
        tilt=float(rng.uniform(0.0, 0.12)),
        gradient=float(rng.uniform(0.0, 0.35)),
        gamma=float(rng.uniform(0.8, 1.25)),
        glare=float(rng.uniform(0.0, 0.35)),
        jpeg=int(rng.integers(70, 95)),
    )


def head_region(photo: RgbImage, face: Box) -> RgbImage:
    """The printed/displayed picture: the head with some shoulders, as a passport-style photo."""
    width, height = face.width * 2.2, face.height * 2.8
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2 + face.height * 0.15
    x0, y0 = int(max(0, cx - width / 2)), int(max(0, cy - height / 2))
    x1, y1 = int(min(photo.shape[1], cx + width / 2)), int(min(photo.shape[0], cy + height / 2))
    return np.ascontiguousarray(photo[y0:y1, x0:x1])


def halftone(image: RgbImage, period: int, paper_white: float) -> RgbImage:
    """Clustered-dot ordered dithering per ink channel (what a printer does), on paper of ``paper_white``."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # a clustered-dot threshold map: distance from the cell centre, period ``period`` px
    cell = (np.cos(2 * np.pi * xx / period) + np.cos(2 * np.pi * yy / period) + 2.0) / 4.0
    ink = image.astype(np.float32) / 255.0
    dots = (ink > cell[..., None]).astype(np.float32)
    # ink spread: the dots bleed into each other, so the tone is partly continuous
    tone = 0.55 * cv2.GaussianBlur(dots, (0, 0), period * 0.35) + 0.45 * ink
    # ink gamut: paper white to a dark but not black ink
    printed = 25.0 + tone * (paper_white - 25.0)
    return np.asarray(np.clip(printed, 0, 255), dtype=np.uint8)


def subpixel_screen(image: RgbImage, period: int, gamma: float, white: float) -> RgbImage:
    """A display: each pixel as R, G, B stripes with dark gaps, display gamma, a white level."""
    height, width = image.shape[:2]
    linear = (image.astype(np.float32) / 255.0) ** gamma * white
    stripes = np.zeros_like(linear)
    column = np.arange(width) % period
    for channel in range(3):
        on = (column * 3 // period) == channel
        stripes[:, on, channel] = linear[:, on, channel] * 2.0
    rows = (np.arange(height) % period) != 0  # the dark row between pixel rows
    stripes *= rows[:, None, None]
    # the camera sees the grid through the cover glass and its own optics: partly smoothed
    shown = 0.35 * stripes + 0.65 * linear
    return np.clip(shown, 0, 255).astype(np.uint8)


def with_border(image: RgbImage, fraction: float, colour: tuple[float, float, float]) -> RgbImage:
    pad = max(2, int(image.shape[1] * fraction))
    bordered = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=colour)
    return np.asarray(bordered, dtype=np.uint8)


def light_gradient(image: RgbImage, strength: float, angle: float) -> RgbImage:
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) - 0.5
    lit = image.astype(np.float32) * (1.0 + strength * ramp)[..., None]
    return np.asarray(np.clip(lit, 0, 255), dtype=np.uint8)


def glare_band(image: RgbImage, strength: float) -> RgbImage:
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    band = np.exp(-(((xx / width - yy / height) - 0.2) ** 2) / 0.01)
    lit = image.astype(np.float32) + strength * 255.0 * band[..., None]
    return np.asarray(np.clip(lit, 0, 255), dtype=np.uint8)


def card(photo: RgbImage, face: Box, species: str, params: RenderParams) -> RgbImage:
    """The attack instrument itself (print, screen or cut-out), before it is put in front of a camera."""
    head = head_region(photo, face)
    # printers and phones show the picture at their own resolution: ~4 halftone cells per 10 px of face
    target_width = 480
    size = (target_width, int(head.shape[0] * target_width / head.shape[1]))
    head = np.asarray(cv2.resize(head, size), dtype=np.uint8)
    if species in ("print", "cutout", "print_clip"):
        printed = halftone(head, params.halftone_period, params.paper_white)
        if species == "cutout":
            return printed
        white = (params.paper_white,) * 3
        return with_border(printed, params.border, white)
    displayed = subpixel_screen(head, params.halftone_period, params.gamma, params.paper_white)
    displayed = glare_band(displayed, params.glare)
    return with_border(displayed, params.border, (12.0, 12.0, 14.0))


def cutout_alpha(image: RgbImage) -> NDArray[np.float32]:
    rows, cols = image.shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    ellipse = ((xx - cols / 2) / (cols / 2)) ** 2 + ((yy - rows / 2) / (rows / 2)) ** 2
    mask: NDArray[np.float32] = (ellipse <= 1.0).astype(np.float32)
    return mask


def place(
    background: RgbImage,
    instrument: RgbImage,
    *,
    centre: tuple[float, float],
    width_px: float,
    tilt: float,
    alpha: NDArray[np.float32] | None = None,
) -> RgbImage:
    """The instrument held in front of the camera: scaled, tilted (perspective), pasted on the scene."""
    rows, cols = instrument.shape[:2]
    scale = width_px / cols
    w, h = cols * scale, rows * scale
    cx, cy = centre
    shrink = tilt * h / 2  # the far side of a tilted card looks shorter
    target = np.array(
        [
            [cx - w / 2, cy - h / 2 + shrink],
            [cx + w / 2, cy - h / 2],
            [cx + w / 2, cy + h / 2],
            [cx - w / 2, cy + h / 2 - shrink],
        ],
        np.float32,
    )
    source = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], np.float32)
    matrix = cv2.getPerspectiveTransform(source, target)
    size = (background.shape[1], background.shape[0])
    warped = cv2.warpPerspective(instrument, matrix, size, flags=cv2.INTER_AREA)
    mask_source = np.ones((rows, cols), np.float32) if alpha is None else alpha
    mask = cv2.warpPerspective(mask_source, matrix, size, flags=cv2.INTER_LINEAR)[..., None]
    blended = background.astype(np.float32) * (1 - mask) + warped.astype(np.float32) * mask
    return np.clip(blended, 0, 255).astype(np.uint8)


def camera(image: RgbImage, jpeg: int) -> RgbImage:
    """What the unit's camera makes of the scene: slight blur and JPEG."""
    blurred = cv2.GaussianBlur(image, (0, 0), 0.5)
    ok, data = cv2.imencode(".jpg", blurred[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg])
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("JPEG decoding failed")
    return np.ascontiguousarray(np.asarray(decoded, dtype=np.uint8)[:, :, ::-1])


def still_attack(
    photo: RgbImage, face: Box, species: str, params: RenderParams, size: tuple[int, int] = (640, 480)
) -> RgbImage:
    """A camera frame of the instrument held up in the entrance (a still presentation)."""
    instrument = card(photo, face, species, params)
    instrument = light_gradient(instrument, params.gradient, params.tilt * 20)
    width, height = size
    alpha = cutout_alpha(instrument) if species == "cutout" else None
    scene = place(
        hallway(width, height),
        instrument,
        centre=(width * 0.5, height * 0.48),
        width_px=width * 0.42,
        tilt=params.tilt,
        alpha=alpha,
    )
    return camera(scene, params.jpeg)


def attack_clip_frames(
    photo: RgbImage,
    face: Box,
    species: str,
    params: RenderParams,
    *,
    frames: int = 36,
    size: tuple[int, int] = (640, 480),
    empty_frames: int = 15,
) -> Iterator[RgbImage]:
    """A print, phone or cut-out moved towards the camera as one flat object, tilting as it comes."""
    base = species.removesuffix("_clip")
    if base not in SPECIES_STILL:
        raise ValueError(f"no attack clip species {species!r}")
    instrument = light_gradient(card(photo, face, base, params), params.gradient, 0.7)
    alpha = cutout_alpha(instrument) if base == "cutout" else None
    width, height = size
    background = hallway(width, height)
    for _ in range(empty_frames):
        yield background
    for index in range(frames):
        t = index / max(1, frames - 1)
        eased = t * t * (3.0 - 2.0 * t)
        scene = place(
            background,
            instrument,
            centre=(width * (0.3 + 0.2 * eased), height * 0.45),
            width_px=width * (0.25 + 0.2 * eased),
            tilt=params.tilt * (1.0 - 2.0 * t),
            alpha=alpha,
        )
        yield camera(scene, params.jpeg)
    for _ in range(empty_frames):
        yield background


# --- the attack set on disk (``make pad-fixtures``) ------------------------------------------------

# Subjects split so that the set the cues were looked at while building them ("tune") is not the one
# the acceptance figures come from ("holdout"): different people, different parameter seeds.
TUNE_PHOTOS = ("obama.jpg", "obama2.jpg", "sample1.jpg", "sample2.jpg", "sample3.jpg")
HOLDOUT_PHOTOS = (
    "biden.jpg",
    "obama3.jpg",
    "sample4.jpg",
    "sample5.jpg",
    "sample6.jpg",
    "obama_partial_face.jpg",
)
SEEDS = {"tune": 1201, "holdout": 3012}
DRAWS_PER_STILL = 3


def write_png(path: Path, image: RgbImage) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
        raise OSError(f"cannot write {path}")


def write_attack_set(
    root: Path,
    split: str,
    photos: Sequence[tuple[str, RgbImage]],
    detect: Callable[[RgbImage], list[Detection]],
    *,
    size: tuple[int, int] = (640, 480),
) -> int:
    """Writes ``root/bona_fide`` and ``root/attack/<species>`` for one split; returns the file count."""
    rng = np.random.default_rng(SEEDS[split])
    later_rng = np.random.default_rng((SEEDS[split], 1))  # SPECIES_ADDED_LATER
    written = 0
    background = hallway(*size)
    for name, photo in photos:
        stem = Path(name).stem
        face = largest_face(detect, photo, name)
        # bona fide: the photo itself, the person cut out and standing in the entrance, and a walk-in clip
        write_png(root / "bona_fide" / f"{stem}_photo.png", photo)
        walk = Walk(stem, photo, start_x=float(rng.uniform(0.2, 0.4)), end_x=0.5)
        frames = list(walk_frames(background, walk, face))
        write_png(root / "bona_fide" / f"{stem}_entrance.png", camera(frames[-1], 90))
        write_mjpeg(root / "bona_fide" / f"{stem}_walk.avi", iter_with_empty(background, frames), 15.0, size)
        written += 3
        for species in SPECIES_STILL:
            for draw in range(DRAWS_PER_STILL):
                image = still_attack(photo, face.box, species, draw_params(rng), size)
                write_png(root / "attack" / species / f"{stem}_{draw}.png", image)
                written += 1
        for species in SPECIES_CLIP:
            clip = root / "attack" / species / f"{stem}.avi"
            clip.parent.mkdir(parents=True, exist_ok=True)
            params = draw_params(later_rng if species in SPECIES_ADDED_LATER else rng)
            write_mjpeg(clip, attack_clip_frames(photo, face.box, species, params), 15.0, size)
            written += 1
    return written


def iter_with_empty(background: RgbImage, frames: Sequence[RgbImage], empty: int = 15) -> Iterator[RgbImage]:
    for _ in range(empty):
        yield background
    yield from frames
    for _ in range(empty):
        yield background
