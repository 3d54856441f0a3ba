"""The capture thread: reads the source on its own thread, stamps each frame (``time.monotonic()``, a
per-source ``seq``, so a gap is a dropped frame), prepares its views off the pipeline thread when the
source does not, and hands it over through a ``LatestFrameBuffer`` (cameras: only the newest frame is
kept, so the processing loop never works on a frame more than one frame old)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from device.timing import LatencyRecorder
from device.types import Frame, FrameViews, RgbImage
from device.vision.capture.opencv import redact_url
from device.vision.capture.reconnect import INITIAL_BACKOFF_S, ReconnectingSource
from device.vision.capture.source import EndOfStream, FrameSource
from device.vision.views import ViewSpec, prepare_views

log = logging.getLogger(__name__)


class LatestFrameBuffer:
    """Hands frames from the capture thread to the processing loop.

    Live sources: holds at most ``capacity`` frames and drops the oldest when full (counted), so the
    consumer always gets the freshest frame. Files (``lossless``): the producer waits instead, so a demo or
    a benchmark processes every frame of the clip.
    """

    def __init__(self, capacity: int = 1, *, lossless: bool = False) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._frames: deque[Frame] = deque()
        self._capacity = capacity
        self._lossless = lossless
        self._condition = threading.Condition()
        self._dropped = 0
        self._closed = False

    @property
    def dropped(self) -> int:
        with self._condition:
            return self._dropped

    def put(self, frame: Frame) -> None:
        with self._condition:
            if self._lossless:
                while len(self._frames) >= self._capacity and not self._closed:
                    self._condition.wait()
            while len(self._frames) >= self._capacity:
                self._frames.popleft()
                self._dropped += 1
            if not self._closed:
                self._frames.append(frame)
            self._condition.notify_all()

    def get(self, timeout_s: float | None = None) -> Frame | None:
        """The oldest held frame; None after ``close()`` once drained, or on timeout."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._frames or self._closed, timeout_s):
                return None
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._condition.notify_all()
            return frame

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed and not self._frames

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class CaptureThread:
    """Reads the source on its own thread and stamps each frame (monotonic ts, seq)."""

    def __init__(
        self,
        source: FrameSource,
        max_backoff_s: float = 30.0,
        *,
        buffer_capacity: int = 1,
        clock: Callable[[], float] = time.monotonic,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        views: ViewSpec | None = None,
        latencies: LatencyRecorder | None = None,
    ) -> None:
        self._stop = threading.Event()
        self._views = views
        self._latencies = latencies  # "views": what preparing them costs the capture thread
        self.source = ReconnectingSource(
            source, max_backoff_s, stop_event=self._stop, initial_backoff_s=initial_backoff_s
        )
        self.buffer = LatestFrameBuffer(buffer_capacity, lossless=not source.live)
        self._clock = clock
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    image, views = self._read()
                except EndOfStream:
                    break
                stamp = self._clock()
                if views is None and self._views is not None:
                    views = self._prepare(image, self._views)  # here, not on the pipeline thread
                self.buffer.put(Frame(image=image, ts=stamp, seq=self._seq, views=views))
                self._seq += 1
        except BaseException as error:  # never die silently: the loop sees it via .error
            log.exception("capture thread failed")
            self.error = error
        finally:
            self.source.close()
            self.buffer.close()

    def _prepare(self, image: RgbImage, spec: ViewSpec) -> FrameViews:
        if self._latencies is None:
            return prepare_views(image, spec)
        with self._latencies.time("views"):
            return prepare_views(image, spec)

    def _read(self) -> tuple[RgbImage, FrameViews | None]:
        """A frame, with its views when the source made them."""
        if self._views is None:
            return self.source.read(), None
        return self.source.read_with_views(self._views)

    def get(self, timeout_s: float | None = None) -> Frame | None:
        return self.buffer.get(timeout_s)

    @property
    def finished(self) -> bool:
        """True once the source ended (or stop was asked) and every buffered frame was taken."""
        return self.buffer.closed

    def health(self) -> dict[str, Any]:
        status = self.source.health()
        return {
            "state": status.state,
            "reconnects": status.reconnects,
            "last_error": None if status.last_error is None else redact_url(status.last_error),
            "next_retry_s": status.next_retry_s,
            "frames": self._seq,
            "dropped_frames": self.buffer.dropped,
        }

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.buffer.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
