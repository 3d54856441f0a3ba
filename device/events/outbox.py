"""The durable outbox: every event is committed to SQLite before it is published, and deleted only after
the broker acknowledged it with a success reason code.

- WAL with ``synchronous=FULL``: a committed event survives a power cut, not just a process kill.
- ``seq`` is assigned inside the insert transaction from a counter kept in the same database, so it is
  strictly increasing across restarts and never reused, even after every row was delivered and deleted.
- Bounded by rows and bytes. When full, the *oldest* events are dropped (a door controller cares more
  about who is at the door now than about a visit an hour ago); every drop is counted persistently and
  reported in health, so loss is never silent.
- Single process, several threads: one connection guarded by a lock. The one other writer is the unit's
  own CLI (``device forget`` commits a ``subject_forgotten`` event, ``device.events.forgotten``): SQLite
  serialises the two, and the service recounts its rows whenever its own count says the outbox is empty.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.atomicio import UnsafeFileError, ensure_private_directory, open_unit_file
from device.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    event_id: str
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    dropped: int
    last_seq: int
    oldest_age_s: float | None

    def as_health(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "last_seq": self.last_seq,
            "oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 1),
        }


class OutboxError(UserError):
    """The outbox database cannot be opened or used (corrupt, wrong version, unwritable)."""


def wal_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def create_private_file(path: Path) -> None:
    """The db file made 0600 before SQLite opens it, whatever the umask: -wal and -shm inherit its mode."""
    os.close(open_unit_file(path, os.O_WRONLY | os.O_CREAT))
    for companion in wal_files(path):
        # SQLite follows links when it opens these: a link planted here is refused before it does.
        if companion.is_symlink():
            raise UnsafeFileError(f"{companion} is a symbolic link; refusing to follow it")


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be positive")
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._unerased = False  # an ack whose copies in the db and -wal files are not erased yet
        ensure_private_directory(path.parent)
        try:
            create_private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._setup()
        except sqlite3.DatabaseError as error:
            raise OutboxError(f"cannot open the outbox {path}: {error}") from error
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"the outbox {self.path} could not switch to WAL (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten with zeros, and the WAL is checkpointed and truncated after every
        # ack: an acknowledged event leaves no readable copy in the db, -wal or -shm files, even while
        # other events are still queued.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
        version = self._meta("schema")
        if version != SCHEMA_VERSION:
            raise OutboxError(f"the outbox {self.path} has schema {version}; expected {SCHEMA_VERSION}")
        for companion in (self.path, *wal_files(self.path)):
            if companion.exists():
                companion.chmod(0o600)  # SQLite gives -wal/-shm the db's mode; files from older runs too

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def append(self, topic: str, build: Callable[[int], tuple[str, bytes]]) -> OutboxEntry:
        """Commits one event. ``build(seq)`` returns (event_id, payload) for the seq it is given.

        The payload is built inside the transaction so that its seq and the stored seq are the same
        number; if ``build`` raises, nothing is stored and the seq is not consumed.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("last_seq") + 1
                event_id, payload = build(seq)
                created = self._clock()
                self._db.execute(
                    "INSERT INTO outbox (seq, event_id, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                    (seq, event_id, topic, payload, created),
                )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
                rows, size = self._rows + 1, self._bytes + len(payload)
                dropped_now = 0
                while rows > self.max_rows or size > self.max_bytes:
                    oldest = self._db.execute(
                        "SELECT seq, LENGTH(payload) FROM outbox ORDER BY seq LIMIT 1"
                    ).fetchone()
                    if oldest is None or oldest[0] == seq:
                        break  # never drop the event being added: it alone fits the bounds by schema
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (oldest[0],))
                    rows, size, dropped_now = rows - 1, size - int(oldest[1]), dropped_now + 1
                if dropped_now:
                    self._db.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped_now,)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows, self._bytes = rows, size
        if dropped_now:
            log.warning(
                "outbox full (%d rows, %d bytes): dropped the %d oldest event(s)", rows, size, dropped_now
            )
        return OutboxEntry(seq, event_id, topic, payload, created)

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Events not yet acknowledged with ``seq > after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, topic, payload, created FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxEntry(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), float(r[4])) for r in rows]

    def ack(self, seq: int, *, erase_now: bool = True) -> bool:
        """Deletes an acknowledged event; False if it was already gone (dropped, or acked twice).

        ``erase_now=False`` leaves the erasure of its copies (``erase_acknowledged``) to the caller, who
        does it once for a batch: the publisher's I/O thread after each network read of PUBACKs.
        """
        with self._lock:
            size_row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if size_row is None:
                return False
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._rows -= 1
            self._bytes -= int(size_row[0])
            if self._rows <= 0:
                # A row another process appended is not in this process's count: ask the database.
                self._rows, self._bytes = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
                ).fetchone()
            self._unerased = True
            if erase_now:
                self._erase()
            return True

    def erase_acknowledged(self) -> None:
        """Leaves no copy of an acknowledged event in any outbox file (a no-op when none is waiting)."""
        with self._lock:
            if self._unerased:
                self._erase()

    def _erase(self) -> None:
        """Moves every page into the db file and empties the WAL, after every ack, pending rows or not.

        The WAL keeps each page as it was written, so the page holding an acknowledged event stays
        readable in ``-wal`` until a checkpoint copies the newer (zeroed by ``secure_delete``) page over
        it and truncates the log. The checkpoint costs a few fsyncs (about 9 ms here), so a backlog
        replayed after an outage erases once per network read of acknowledgements, not once per
        event. A reader holding an old snapshot (the CLI, briefly) keeps the checkpoint from finishing:
        the next ack or I/O step tries again.
        """
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.debug("outbox checkpoint postponed: another connection is reading")
        else:
            self._unerased = False

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()[0]
            return OutboxStats(
                depth=self._rows,
                bytes=self._bytes,
                dropped=self._meta("dropped"),
                last_seq=self._meta("last_seq"),
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - float(oldest)),
            )

    def close(self) -> None:
        with self._lock:
            if self._unerased:
                self._erase()
            self._db.close()
