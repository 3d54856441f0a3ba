"""A lost camera never ends the service: ``ReconnectingSource`` reopens it with capped exponential
backoff and reports its state for the health topic; a file that is missing or ended is final."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from device.types import FrameViews, RgbImage
from device.vision.capture.source import CameraError, EndOfStream, FrameSource
from device.vision.views import ViewSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
INITIAL_BACKOFF_S = 0.5


def backoff_delays(maximum_s: float, initial_s: float = INITIAL_BACKOFF_S) -> Iterator[float]:
    """0.5, 1, 2, 4, ... seconds, capped at ``maximum_s``."""
    delay = min(initial_s, maximum_s)
    while True:
        yield delay
        delay = min(delay * 2.0, maximum_s)


@dataclass(frozen=True)
class CaptureHealth:
    state: str  # "connected", "reconnecting", "ended", "stopped"
    reconnects: int
    last_error: str | None
    next_retry_s: float | None


class ReconnectingSource:
    """Opens the inner source and reopens it after a ``CameraError`` with capped exponential backoff.

    A lost camera never ends the service: it is reported (``health()``) and retried until ``stop()``.
    """

    def __init__(
        self,
        inner: FrameSource,
        max_backoff_s: float,
        *,
        stop_event: threading.Event | None = None,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
    ) -> None:
        self._inner = inner
        self._max_backoff_s = max_backoff_s
        self._initial_backoff_s = initial_backoff_s
        self._stop = stop_event or threading.Event()
        self._lock = threading.Lock()
        self._opened = False
        self._state = "stopped"
        self._reconnects = 0
        self._last_error: str | None = None
        self._next_retry_s: float | None = None

    @property
    def live(self) -> bool:
        return self._inner.live

    def open(self) -> None:
        self._ensure_open()

    def read(self) -> RgbImage:
        return self._read(self._inner.read)

    def read_with_views(self, spec: ViewSpec) -> tuple[RgbImage, FrameViews | None]:
        """The next frame and, when the source makes them itself (the Pi camera's ISP), its views."""
        native: Callable[[ViewSpec], tuple[RgbImage, FrameViews]] | None = getattr(
            self._inner, "read_with_views", None
        )
        if native is None:
            return self._read(self._inner.read), None
        made = native
        return self._read(lambda: made(spec))

    def _read(self, read: Callable[[], T]) -> T:
        while True:
            self._ensure_open()
            try:
                return read()
            except EndOfStream:
                self._set_state("ended")
                raise
            except CameraError as error:
                if not self._inner.live:
                    raise
                log.warning("camera lost: %s", error)
                self._inner.close()
                self._opened = False
                self._record_error(str(error), reconnecting=True)

    def _ensure_open(self) -> None:
        if self._opened:
            return
        delays = backoff_delays(self._max_backoff_s, self._initial_backoff_s)
        while not self._stop.is_set():
            try:
                self._inner.open()
            except CameraError as error:
                if not self._inner.live:
                    raise  # a missing or unreadable file will not come back: fail clearly, do not spin
                delay = next(delays)
                self._record_error(str(error), reconnecting=True, next_retry_s=delay)
                log.warning("camera unavailable (%s); retrying in %.1f s", error, delay)
                if self._stop.wait(delay):
                    break
                continue
            if self._last_error is not None:
                with self._lock:
                    self._reconnects += 1
                log.info("camera connected again")
            self._opened = True
            self._set_state("connected")
            with self._lock:
                self._next_retry_s = None
            return
        raise EndOfStream  # stopped while waiting for the camera

    def _record_error(self, message: str, *, reconnecting: bool, next_retry_s: float | None = None) -> None:
        with self._lock:
            self._last_error = message
            self._next_retry_s = next_retry_s
            if reconnecting:
                self._state = "reconnecting"

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def health(self) -> CaptureHealth:
        with self._lock:
            return CaptureHealth(self._state, self._reconnects, self._last_error, self._next_retry_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._inner.close()
        self._opened = False
        self._set_state("stopped")
