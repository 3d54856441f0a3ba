"""The frame bundle: what the motion gate and the detector need of a frame, prepared where it is cheap.

The pipeline thread should only infer. The motion gate's small grey picture, the detector's letterbox and
the detector's grey test are therefore prepared before a frame reaches it:

- on the Pi, by the camera's ISP: picamera2 delivers a second, low-resolution YUV420 stream (``lores``)
  sized to the letterbox's inner picture, whose Y plane is the motion gate's grey picture (area-scaled to
  the gate's width: a few microseconds) and whose colour converts to the detector's input; the letterbox
  is then a copy onto the padded square;
- for files and OpenCV cameras, by the capture thread, with the same functions the stages would call
  (``prepare_views``), so that the results are exactly those of preparing on the pipeline thread.

A stage given no view (or one of the wrong size) prepares its own, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig
from device.types import FrameViews, RgbImage
from device.vision.detect import is_grey, letterbox, letterbox_geometry, padded
from device.vision.motion import downscaled_grey


@dataclass(frozen=True)
class ViewSpec:
    """Which views to prepare: the motion gate's width (None: gate off) and the detector's input side."""

    motion_width: int | None
    detector_size: int

    @classmethod
    def for_unit(cls, config: UnitConfig, detector_size: int) -> ViewSpec:
        return cls(config.motion.downscale_width if config.motion.enabled else None, detector_size)

    def lores_size(self, width: int, height: int) -> tuple[int, int]:
        """The low-resolution stream the camera should deliver for a ``width`` x ``height`` main stream:
        the letterbox's inner picture, so that the ISP does the detector's scaling."""
        inner_w, inner_h, _, _ = letterbox_geometry(width, height, self.detector_size)
        return inner_w, inner_h


def prepare_views(image: RgbImage, spec: ViewSpec) -> FrameViews:
    """The views computed in software (capture thread): identical to what the stages compute themselves."""
    grey = None if spec.motion_width is None else downscaled_grey(image, spec.motion_width)
    return FrameViews(
        motion_grey=grey, detector_input=letterbox(image, spec.detector_size), colourless=is_grey(image)
    )


def views_from_lores(image: RgbImage, lores_yuv420: NDArray[np.uint8], spec: ViewSpec) -> FrameViews:
    """The views from the camera's low-resolution I420 picture (``lores``: height * 3/2 rows, Y then U
    then V), taken from the same request as ``image``. Raises ValueError when it is not the letterbox's
    inner size (the caller then prepares the views in software)."""
    height, width = image.shape[:2]
    inner_w, inner_h = spec.lores_size(width, height)
    if lores_yuv420.shape != (inner_h * 3 // 2, inner_w) or inner_h % 2 or inner_w % 2:
        raise ValueError(
            f"lores picture {lores_yuv420.shape} is not the I420 of the letterbox's {inner_w}x{inner_h}"
        )
    luma = lores_yuv420[:inner_h]
    grey = None
    if spec.motion_width is not None:
        motion_h = max(1, round(inner_h * spec.motion_width / inner_w))
        grey = np.asarray(
            cv2.resize(luma, (spec.motion_width, motion_h), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    rgb = np.asarray(cv2.cvtColor(lores_yuv420, cv2.COLOR_YUV2RGB_I420), dtype=np.uint8)
    return FrameViews(
        motion_grey=grey,
        detector_input=padded(rgb, width, height, spec.detector_size),
        colourless=is_grey(rgb),
    )
