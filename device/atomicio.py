"""Crash-safe file writes: a reader sees the old file or the new one, never a half-written mix.

The new content goes to a temporary file in the same directory (same filesystem, so the rename is
atomic), is fsynced, renamed over the target, and the directory is fsynced so the rename itself survives
a power cut. Files are created with their final mode from the start (no window where a secret is
world-readable before a chmod).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fsync_directory(path.parent)


def create_exclusively(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write a new file that must not exist yet (a key is never silently overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    fsync_directory(path.parent)


def ensure_private_directory(directory: Path, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create ``directory`` (and parents) if needed; a directory we create gets ``mode`` exactly."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=mode, exist_ok=True)
    directory.chmod(mode)  # mkdir's mode is filtered by the umask


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialises read-modify-write cycles between processes (CLI commands and the running unit)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
