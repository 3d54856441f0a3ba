"""The ``picamera2`` backend: the Raspberry Pi camera through libcamera. picamera2 is imported only when
the camera is opened, because it exists only on the Pi (from its apt repository). Given a ``ViewSpec``,
the ISP's low-resolution stream supplies the frame's views."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from device.types import FrameViews, RgbImage
from device.vision.capture.source import CameraError, bgr_to_rgb
from device.vision.views import ViewSpec, prepare_views, views_from_lores

log = logging.getLogger(__name__)


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (lazy import: it exists only on the Pi)."""

    live = True

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        hflip: bool,
        vflip: bool,
        *,
        views: ViewSpec | None = None,
        camera_factory: Callable[[], Any] | None = None,
        transform: Callable[..., Any] | None = None,
    ) -> None:
        self._size = (width, height)
        self._fps = fps
        self._hflip = hflip
        self._vflip = vflip
        self._views = views
        # The low-resolution stream: the letterbox's inner size, YUV420 (what every Pi's ISP can give).
        self.lores_size = views.lores_size(width, height) if views is not None else None
        self._camera_factory = camera_factory
        self._transform = transform
        self._camera: Any = None
        self._lores_refused: str | None = None

    def open(self) -> None:
        camera_factory, transform = self._camera_factory, self._transform
        if camera_factory is None or transform is None:
            try:
                from libcamera import Transform  # type: ignore[import-not-found]
                from picamera2 import Picamera2
            except ImportError as error:
                raise CameraError(
                    f"picamera2 is not available ({error}); on the Pi: `apt install python3-picamera2`"
                ) from None
            camera_factory, transform = Picamera2, Transform
        streams: dict[str, Any] = {"main": {"size": self._size, "format": "RGB888"}}
        if self.lores_size is not None:
            streams["lores"] = {"size": self.lores_size, "format": "YUV420"}
        try:
            camera = camera_factory()
            configuration = camera.create_video_configuration(
                **streams,
                controls={"FrameRate": self._fps},
                transform=transform(hflip=int(self._hflip), vflip=int(self._vflip)),
                buffer_count=2,
            )
            camera.configure(configuration)
            camera.start()
        except Exception as error:  # libcamera raises RuntimeError/IndexError/... when no camera is found
            raise CameraError(f"picamera2 could not start the camera: {error}") from None
        self._camera = camera

    def read(self) -> RgbImage:
        if self._camera is None:
            raise CameraError("camera is not open")
        try:
            array = self._camera.capture_array("main")
        except Exception as error:
            raise CameraError(f"picamera2 capture failed: {error}") from None
        return picamera2_rgb(array)

    def read_with_views(self, spec: ViewSpec) -> tuple[RgbImage, FrameViews]:
        """The main picture and the views from the low-resolution stream of the same request."""
        if self._camera is None:
            raise CameraError("camera is not open")
        if self.lores_size is None or self._lores_refused is not None:
            image = self.read()
            return image, prepare_views(image, spec)
        try:
            request = self._camera.capture_request()
            try:
                main, lores = request.make_array("main"), request.make_array("lores")
            finally:
                request.release()
        except Exception as error:
            raise CameraError(f"picamera2 capture failed: {error}") from None
        image = picamera2_rgb(main)
        try:
            return image, views_from_lores(image, np.asarray(lores, dtype=np.uint8), spec)
        except ValueError as error:
            # e.g. a lores stride wider than the picture: the capture thread prepares the views instead
            self._lores_refused = str(error)
            log.warning(
                "the camera's low-resolution stream is not usable (%s); views made in software", error
            )
            return image, prepare_views(image, spec)

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            except Exception as error:
                log.warning("closing picamera2 failed: %s", error)
            self._camera = None


def picamera2_rgb(array: Any) -> RgbImage:
    # picamera2's "RGB888" is libcamera's naming: the bytes in memory are B, G, R.
    return bgr_to_rgb(np.asarray(array)[:, :, :3])
