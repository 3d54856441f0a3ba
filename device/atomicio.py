"""Crash-safe file writes (a reader sees the old file or the new one, never a half-written mix), safe opens.

The new content goes to a temporary file in the same directory (same filesystem, so the rename is
atomic), is fsynced, renamed over the target, and the directory is fsynced so the rename itself survives
a power cut. Files are created with their final mode from the start (no window where a secret is
world-readable before a chmod).

Also the two ways the unit opens files it did not just write: ``open_unit_file`` for its own folders
(never through a symbolic link, never a file planted by another user) and ``read_capped`` for files a
person hands the CLI (a regular file under a size cap, checked before reading).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from device.errors import EXIT_USAGE, UserError

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


class UnsafeFileError(UserError):
    """A file in the unit's folders is a symbolic link or belongs to someone it must not: never followed."""

    exit_code = EXIT_USAGE


def ownership_problem(path: Path, owner: int) -> str | None:
    """Whose file is it? Our own; or, for root (the operator's sudo), root's or the owner's of the
    folder holding it, that folder writable by nobody else. Anything else could have been planted by a
    user who wants a root-run command to trust it."""
    me = os.geteuid()
    if owner == me:
        return None
    if me != 0:
        return f"belongs to user {owner}, not to this user ({me})"
    if owner == 0:
        return None
    folder = path.parent.stat()
    if folder.st_uid == owner and not stat.S_IMODE(folder.st_mode) & 0o022:
        return None  # the service user's own file in its own private folder
    return f"belongs to user {owner}, who does not own its folder {path.parent}"


def open_unit_file(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """``os.open`` for a file in the unit's own folders: never through a symbolic link, never a file
    planted by another user. The service user owns the state folder; without this, a symlink there makes
    a root-run CLI create or append files anywhere (issue 25). ``OSError`` (missing file) is the caller's.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path} is not a regular file; refusing to use it")
        problem = ownership_problem(path, info.st_uid)
        if problem:
            raise UnsafeFileError(f"{path} {problem}; refusing to use it")
        if info.st_nlink > 1:  # a hard link to a file elsewhere (say root's) passes the owner check
            raise UnsafeFileError(f"{path} has {info.st_nlink} hard links; refusing to use it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_unit_file(path: Path) -> bytes:
    """The bytes of a file in the unit's folders, opened with ``open_unit_file``'s checks."""
    fd = open_unit_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialises read-modify-write cycles between processes (CLI commands and the running unit)."""
    fd = open_unit_file(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- Files handed to the CLI --------------------------------------------------------------------------
# Every file a command takes (a config, a picture, a sealed set, a backup, a key registry, a door policy)
# goes through ``read_capped``: opened without blocking (a FIFO cannot hang the command), ``fstat`` on the
# open descriptor says whether it is a regular file and how large it is, and only then is it read, never
# more than the cap. ``/dev/zero``, a FIFO, a directory or a 3 GB file is refused in one line with exit
# code 2 before a byte is read; a file that grows while it is read is refused too.

KIB = 1024
MIB = 1024 * KIB


class InputFileError(UserError):
    """A file given to a command is not a regular file, is larger than its kind may be, or nests too deep."""

    exit_code = EXIT_USAGE


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``; ``what`` names it in the error.

    ``OSError`` (missing file, no permission) is left to the caller, which knows how to word it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"{what} {path} is not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise InputFileError(
                f"{what} {path} is {info.st_size} bytes, more than the {describe_size(max_bytes)} it may be"
            )
        chunks: list[bytes] = []
        remaining = max_bytes + 1  # one byte more than allowed tells a file that grew since the fstat
        while remaining > 0:
            chunk = os.read(fd, min(remaining, MIB))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise InputFileError(f"{what} {path} grew past {describe_size(max_bytes)} while it was read")
    return data


def parse_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` whose nesting bomb is one ``InputFileError`` line instead of a RecursionError.

    Malformed JSON stays a ``ValueError`` for the caller's own message.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise InputFileError(f"{what}: JSON nested too deeply") from None


def describe_size(count: int) -> str:
    if count >= MIB and count % MIB == 0:
        return f"{count // MIB} MiB"
    if count >= KIB and count % KIB == 0:
        return f"{count // KIB} KiB"
    return f"{count} bytes"
