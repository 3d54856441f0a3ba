"""The ``file`` backend: a video file or a folder of images (demos, tests), optionally looped and paced at
``fps``. A missing or undecodable file is a ``CameraError`` that never heals, so it is not retried."""

from __future__ import annotations

from pathlib import Path

import cv2

from device.types import RgbImage
from device.vision.capture.pacer import Pacer
from device.vision.capture.source import CameraError, EndOfStream, bgr_to_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class FileSource:
    """Frames from a video file or a folder of images (sorted by name)."""

    live = False

    def __init__(self, path: Path, *, loop: bool = False, fps: float | None = None) -> None:
        self._path = path
        self._loop = loop
        self._pacer = Pacer(fps) if fps else None
        self._images: list[Path] = []
        self._index = 0
        self._video: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self._path.is_dir():
            self._images = sorted(p for p in self._path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise CameraError(
                    f"{self._path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            self._index = 0
            return
        if not self._path.is_file():
            raise CameraError(f"{self._path}: no such video file or image folder")
        video = cv2.VideoCapture(str(self._path))
        if not video.isOpened():
            raise CameraError(f"{self._path}: cannot be decoded as a video")
        self._video = video

    def read(self) -> RgbImage:
        image = self._next_image()
        if self._pacer is not None:
            self._pacer.wait()
        return image

    def _next_image(self) -> RgbImage:
        if self._images:
            if self._index >= len(self._images):
                if not self._loop:
                    raise EndOfStream
                self._index = 0
            path = self._images[self._index]
            self._index += 1
            decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if decoded is None:
                raise CameraError(f"{path}: cannot be decoded as an image")
            return bgr_to_rgb(decoded)
        if self._video is None:
            raise CameraError("the file source is not open")
        ok, decoded = self._video.read()
        if not ok and self._loop:
            self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, decoded = self._video.read()
        if not ok:
            raise EndOfStream
        return bgr_to_rgb(decoded)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
