"""What every camera source is: the ``FrameSource`` protocol, its two ways to stop, and the picture
helpers all backends share (BGR to RGB, the mounting orientation applied in software)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from device.errors import UserError
from device.types import RgbImage


class CameraError(UserError):
    """The camera could not be opened or stopped delivering frames (a reconnect may help)."""


class EndOfStream(Exception):  # noqa: N818 - an end, not an error
    """A finite source (a file that is not looped) has no more frames."""


class FrameSource(Protocol):
    """A camera or file; ``read`` blocks until the next frame."""

    @property
    def live(self) -> bool:
        """True for cameras (drop frames when behind), False for files (never drop)."""
        ...

    def open(self) -> None: ...

    def read(self) -> RgbImage:
        """The next frame as RGB; raises ``CameraError`` (retryable) or ``EndOfStream``."""
        ...

    def close(self) -> None: ...


def orient(image: RgbImage, rotation: int, hflip: bool, vflip: bool) -> RgbImage:
    """Applies the mounting orientation: clockwise rotation in degrees, then flips."""
    turned = np.rot90(image, k=-(rotation // 90)) if rotation else image
    if hflip:
        turned = turned[:, ::-1]
    if vflip:
        turned = turned[::-1]
    return np.ascontiguousarray(turned)


def bgr_to_rgb(image: np.ndarray[Any, Any]) -> RgbImage:
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2), dtype=np.uint8)
    return np.ascontiguousarray(image[:, :, 2::-1], dtype=np.uint8)


class OrientedSource:
    """Rotation (and, where the backend cannot flip, flips) applied in software."""

    def __init__(self, inner: FrameSource, rotation: int, hflip: bool, vflip: bool) -> None:
        self._inner = inner
        self._rotation = rotation
        self._hflip = hflip
        self._vflip = vflip

    @property
    def live(self) -> bool:
        return self._inner.live

    def open(self) -> None:
        self._inner.open()

    def read(self) -> RgbImage:
        return orient(self._inner.read(), self._rotation, self._hflip, self._vflip)

    def close(self) -> None:
        self._inner.close()
