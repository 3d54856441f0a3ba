"""Real-time pacing of a file source: frames released ``1/fps`` apart, as a camera would deliver them."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Sleeps so that successive frames are released ``1/fps`` apart (file backend, real-time mode)."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = 1.0 / fps
        self._clock = clock
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is None or now - self._next > self._period:
            self._next = now  # first frame, or we fell behind: restart the schedule instead of bursting
        else:
            time.sleep(max(0.0, self._next - now))
        self._next += self._period
