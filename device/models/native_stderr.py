"""Keeps the TFLite runtime's start-up banner off the installer's screen, and nothing else.

The C++ runtime writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to file
descriptor 2 when an interpreter is built. It does not go through Python's logging, so ``--log-level``
cannot touch it, and the Python wheel exposes no switch for the runtime's minimum log severity. So while
an interpreter is built, fd 2 points at a pipe; afterwards every captured line is written back
to the real stderr except the known INFO banners (sent to the debug log instead). Warnings and errors from
the runtime still reach the screen, in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Lines the runtime prints at INFO severity on every interpreter it builds. Matched exactly (after
# stripping), so a different message, however similar, is passed through.
RUNTIME_INFO_BANNERS = frozenset(
    {
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "INFO: Initialized TensorFlow Lite runtime.",
    }
)

# fd 2 is process-wide: two threads redirecting at once would restore each other's descriptors wrongly.
_REDIRECT_LOCK = threading.Lock()


def split_banners(captured: bytes) -> tuple[bytes, list[str]]:
    """(bytes to pass through to stderr, banner lines removed)."""
    kept: list[bytes] = []
    removed: list[str] = []
    for line in captured.splitlines(keepends=True):
        text = line.decode("utf-8", errors="replace").strip()
        if text in RUNTIME_INFO_BANNERS:
            removed.append(text)
        else:
            kept.append(line)
    return b"".join(kept), removed


@contextlib.contextmanager
def without_runtime_banner() -> Iterator[None]:
    """Runs the block with fd 2 captured; re-emits what was captured, minus the runtime's INFO banner.

    The capture is a pipe drained by a thread, never a file: the unit writes nothing to disk while it
    watches the entrance (tests/runtime/test_no_trace.py), and a full pipe cannot block the runtime.
    """
    stderr_fd = 2  # where the C++ runtime writes, whatever Python's sys.stderr is
    with _REDIRECT_LOCK:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        read_end, write_end = os.pipe()
        captured = bytearray()

        def drain() -> None:
            while chunk := os.read(read_end, 65536):
                captured.extend(chunk)

        reader = threading.Thread(target=drain, name="stderr-capture", daemon=True)
        reader.start()
        saved = os.dup(stderr_fd)
        os.dup2(write_end, stderr_fd)
        os.close(write_end)
        try:
            yield
        finally:
            os.dup2(saved, stderr_fd)  # closes the pipe's last write end: the reader sees EOF
            os.close(saved)
            reader.join(timeout=2.0)
            if not reader.is_alive():
                os.close(read_end)  # else a child kept the pipe open; leave the fd to the daemon thread
            passed, removed = split_banners(bytes(captured))
            if passed:
                os.write(stderr_fd, passed)
            for banner in removed:
                log.debug("TFLite runtime: %s", banner)
