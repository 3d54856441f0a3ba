"""Reading a file someone hands the CLI: a regular file of a bounded size, checked before reading.

Every file a command takes (a config, a picture, a sealed set, a backup, a key registry, a door policy)
goes through ``read_capped``: the file is opened without blocking (a FIFO cannot hang the command),
``fstat`` on the open descriptor says whether it is a regular file and how large it is, and only then is
it read, never more than the cap. ``/dev/zero``, a FIFO, a directory or a 3 GB file is refused in one
line with exit code 2 before a byte is read; a file that grows while it is read is refused too.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from device.errors import EXIT_USAGE, UserError

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
