"""A plain progress bar on stderr for commands that work through many pictures or frames.

On a terminal the bar is redrawn in place; into a pipe or a log it writes one line per step, so a
captured log still shows how far the command got. Nothing but counts and the item's label is shown.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO


def progress_line(done: int, total: int, label: str, width: int = 24) -> str:
    """``[#########---------------]  3/8 label``."""
    filled = 0 if total <= 0 else min(width, math.floor(width * done / total))
    count = f"{done:>{len(str(total))}}/{total}"
    return f"[{'#' * filled}{'-' * (width - filled)}] {count} {label}".rstrip()


class ProgressBar:
    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._inplace = enabled and self._stream.isatty()
        self._drawn = False

    def step(self, label: str) -> None:
        self.done += 1
        if not self._enabled:
            return
        line = progress_line(self.done, self.total, label)
        if self._inplace:
            self._stream.write("\r\033[K" + line)
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
