"""Local claims for verification mode, handed to a running unit through files in its state directory.

``device claim SUBJECT_ID`` must reach the running unit, and the unit listens on no port at all (not
even a UNIX socket, which is a listening socket too). So the command drops a small file into
``<state_dir>/claims/`` (mode 0700, owned by the unit user: only that user or root can claim) and the
unit's run loop picks it up with ``ClaimDrop.take()``, deletes it, and calls ``Pipeline.claim``. A claim
file holds only the pseudonymous subject id and the time it was made; a claim older than the claim
window is dropped unused (a unit that was down does not act on stale claims).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.atomicio import (
    InputFileError,
    ensure_private_directory,
    parse_json,
    read_capped,
    write_atomically,
)
from device.errors import UserError

log = logging.getLogger(__name__)

CLAIM_SUFFIX = ".claim"
SUBJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CLAIM_FILE_BYTES = 1024


class ClaimError(UserError):
    pass


@dataclass(frozen=True)
class Claim:
    subject_id: str
    created: float  # time.time() when the claim was made


class ClaimDrop:
    def __init__(self, directory: Path, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.window_s = window_s
        self._clock = clock

    def submit(self, subject_id: str) -> Path:
        if not SUBJECT_ID_PATTERN.match(subject_id):
            raise ClaimError(f"not a subject id: {subject_id!r}")
        ensure_private_directory(self.directory)
        now = self._clock()
        path = self.directory / f"{time.time_ns()}-{subject_id}{CLAIM_SUFFIX}"
        write_atomically(path, json.dumps({"subject_id": subject_id, "created": now}).encode())
        return path

    def take(self) -> list[Claim]:
        """Claims waiting for the unit, oldest first; each file is removed whether used or not."""
        try:
            paths = sorted(self.directory.glob(f"*{CLAIM_SUFFIX}"))
        except OSError:
            return []
        now = self._clock()
        claims = []
        for path in paths:
            claim = _read_claim(path)
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another reader took it
            if claim is None:
                log.warning("ignored a malformed claim file %s", path.name)
            elif not 0 <= now - claim.created <= self.window_s:
                log.info("ignored a stale claim for %s", claim.subject_id)
            else:
                claims.append(claim)
        return claims


def _read_claim(path: Path) -> Claim | None:
    try:
        data = parse_json(read_capped(path, MAX_CLAIM_FILE_BYTES, "claim file"), "claim file")
        subject_id = str(data["subject_id"])
        created = float(data["created"])
    except (OSError, ValueError, KeyError, TypeError, InputFileError):
        return None
    if not SUBJECT_ID_PATTERN.match(subject_id):
        return None
    return Claim(subject_id, created)
