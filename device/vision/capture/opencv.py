"""The ``opencv`` backend: a V4L2 device (index or ``/dev/videoN``) or an RTSP/HTTP stream through
``cv2.VideoCapture``; the config has checked the source's form already."""

from __future__ import annotations

import re

import cv2
import numpy as np

from device.types import RgbImage
from device.vision.capture.source import CameraError, bgr_to_rgb


def opencv_device(source: str) -> int | str:
    """What ``cv2.VideoCapture`` takes for a checked ``capture.source``: an index as int, else the text."""
    return int(source) if source.isdigit() else source


class OpenCvSource:
    """A USB/V4L2 camera or an IP camera stream through OpenCV."""

    live = True

    def __init__(self, source: int | str, width: int, height: int, fps: float) -> None:
        self._source = source
        self._size = (width, height)
        self._fps = fps
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        capture = cv2.VideoCapture(self._source)
        if not capture.isOpened():
            raise CameraError(f"cannot open camera {redact_url(str(self._source))}")
        if isinstance(self._source, int) or str(self._source).startswith("/dev/"):
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
            capture.set(cv2.CAP_PROP_FPS, self._fps)
        # Keep the driver's own queue short so that a slow consumer sees recent frames.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture

    def read(self) -> RgbImage:
        if self._capture is None:
            raise CameraError("camera is not open")
        ok, decoded = self._capture.read()
        if not ok or decoded is None:
            raise CameraError(f"camera {redact_url(str(self._source))} delivered no frame")
        image = bgr_to_rgb(decoded)
        if (image.shape[1], image.shape[0]) != self._size:
            image = np.ascontiguousarray(cv2.resize(image, self._size, interpolation=cv2.INTER_AREA))
        return image

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def redact_url(source: str) -> str:
    """Stream URLs may carry credentials (rtsp://user:pass@host); logs and health must not."""
    return re.sub(r"//[^/@]*@", "//***@", source)
