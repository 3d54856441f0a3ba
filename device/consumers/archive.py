"""The access log: verified decisions in a real database, for a bounded time, with forgotten subjects
tombstoned.

``device events archive`` subscribes (optionally in a shared-subscription group, so several archivers
split the load), verifies every event's signature against the unit key registry and stores one row per
event: unit, seq, event id, time, decision type, subject id, frames and reasons. Nothing else of the
event is kept: no similarity, margin or liveness score (an access log needs who, where, when and what was
decided, not how close a face came), and no biometric exists in an event to begin with.

- Idempotent on (unit, seq): ``INSERT ... ON CONFLICT (unit, seq) DO NOTHING``. A redelivery (QoS 1, a
  bridge replaying its queue, a unit replaying its outbox, another archiver of the group that got the
  event first) never duplicates a row, so the signature check does not need ``seq`` order here.
- Retention: rows older than ``keep_days`` are deleted by ``sweep`` (on start and on a schedule), and
  an event older than that is not stored at all.
- ``subject_forgotten`` (signed by the unit that forgot the subject): every row naming that subject
  gets ``subject = NULL, forgotten = 1``; the pseudonymous id is also remembered (until it ages out of
  the retention window) so that an older event arriving later is stored tombstoned too.

SQLite by default (one file, for one building; WAL, so ``history`` reads while archivers write) or
PostgreSQL (``postgresql://...``, central; needs the ``archive`` extra, psycopg). The SQL is the same for
both; only the parameter marker differs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from device.errors import UserError
from device.events.payloads import epoch_seconds

log = logging.getLogger(__name__)

FORGOTTEN_TYPE = "subject_forgotten"
DEFAULT_KEEP_DAYS = 30
DAY_S = 86_400.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS access_log ("
    " unit TEXT NOT NULL, seq BIGINT NOT NULL, event_id TEXT NOT NULL, ts TEXT NOT NULL,"
    " ts_epoch DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, subject TEXT,"
    " forgotten INTEGER NOT NULL DEFAULT 0, frames INTEGER NOT NULL, reasons TEXT NOT NULL,"
    " stored_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (unit, seq))",
    "CREATE INDEX IF NOT EXISTS access_log_ts ON access_log (ts_epoch)",
    "CREATE INDEX IF NOT EXISTS access_log_subject ON access_log (subject)",
    "CREATE TABLE IF NOT EXISTS forgotten ("
    " subject TEXT PRIMARY KEY, unit TEXT NOT NULL, seq BIGINT NOT NULL, ts_epoch DOUBLE PRECISION NOT NULL)",
)
# A row's subject is stored as NULL (forgotten = 1) when the subject was forgotten before it arrived.
INSERT = (
    "INSERT INTO access_log (unit, seq, event_id, ts, ts_epoch, type, subject, forgotten, frames, reasons,"
    " stored_at) VALUES (?, ?, ?, ?, ?, ?,"
    " CASE WHEN EXISTS (SELECT 1 FROM forgotten WHERE subject = ?) THEN NULL ELSE ? END,"
    " CASE WHEN EXISTS (SELECT 1 FROM forgotten WHERE subject = ?) THEN 1 ELSE 0 END, ?, ?, ?)"
    " ON CONFLICT (unit, seq) DO NOTHING"
)
REMEMBER_FORGOTTEN = (
    "INSERT INTO forgotten (subject, unit, seq, ts_epoch) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (subject) DO NOTHING"
)
TOMBSTONE = "UPDATE access_log SET subject = NULL, forgotten = 1 WHERE subject = ?"
SELECT_ROWS = "SELECT unit, seq, event_id, ts, type, subject, forgotten, frames, reasons FROM access_log"


class ArchiveError(UserError):
    """The archive database cannot be opened or used."""


class Connection(Protocol):
    """The DB-API subset both sqlite3 and psycopg give."""

    def execute(self, query: str, params: Sequence[Any] = ...) -> Any: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AccessRow:
    """One stored decision. ``subject`` is None for a visit without one and for a forgotten subject
    (then ``forgotten`` is True: a door opened for someone the log no longer names)."""

    unit: str
    seq: int
    event_id: str
    ts: str
    type: str
    subject: str | None
    forgotten: bool
    frames: int
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "seq": self.seq,
            "event_id": self.event_id,
            "ts": self.ts,
            "type": self.type,
            "subject": self.subject,
            "forgotten": self.forgotten,
            "frames": self.frames,
            "reasons": list(self.reasons),
        }


def row_values(event: Mapping[str, Any], stored_at: float) -> tuple[Any, ...]:
    """The INSERT parameters for a verified event: its decision, nothing more."""
    subject = event.get("subject")
    return (
        str(event["unit"]),
        int(event["seq"]),
        str(event["event_id"]),
        str(event["ts"]),
        epoch_seconds(str(event["ts"])),
        str(event["type"]),
        subject,
        subject,
        subject,
        int(event["frames"]),
        json.dumps(list(event["reasons"])),
        stored_at,
    )


def parse_since(text: str, now: float) -> float:
    """``--since``: an RFC 3339 time (``2026-12-07T20:00:00Z``, a date) or an age (``90s``, ``15m``, ``2h``,
    ``7d``); seconds since the epoch."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}[match.group(2)]
        return now - float(match.group(1)) * scale
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a time (2026-12-07T20:00:00Z) or an age (30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


class Archive:
    """One database connection; thread-safe (paho's network thread stores, a timer thread sweeps)."""

    def __init__(
        self, connection: Connection, *, postgres: bool, keep_days: float = DEFAULT_KEEP_DAYS
    ) -> None:
        if keep_days <= 0:
            raise ArchiveError("keep_days must be positive")
        self._db = connection
        self._postgres = postgres
        self.keep_days = keep_days
        self._lock = threading.Lock()
        with self._lock:
            for statement in SCHEMA:
                self._run(statement)
            self._db.commit()

    @classmethod
    def open(cls, target: str, *, keep_days: float = DEFAULT_KEEP_DAYS) -> Archive:
        """``postgresql://...`` (psycopg) or a SQLite file path."""
        if target.startswith(POSTGRES_SCHEMES):
            return cls(_connect_postgres(target), postgres=True, keep_days=keep_days)
        return cls(_connect_sqlite(Path(target)), postgres=False, keep_days=keep_days)

    def _run(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(query.replace("?", "%s") if self._postgres else query, params)

    def _transaction(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        with self._lock:
            try:
                counts = [int(self._run(query, params).rowcount) for query, params in steps]
                self._db.commit()
            except Exception:
                self._db.rollback()
                raise
        return counts

    @property
    def oldest_kept(self) -> float:
        return time.time() - self.keep_days * DAY_S

    def store(self, event: Mapping[str, Any], *, now: float | None = None) -> bool:
        """Stores a verified event; False when (unit, seq) is stored already or it is past retention."""
        moment = time.time() if now is None else now
        if epoch_seconds(str(event["ts"])) < moment - self.keep_days * DAY_S:
            return False
        steps: list[tuple[str, Sequence[Any]]] = []
        if event.get("type") == FORGOTTEN_TYPE and isinstance(event.get("subject"), str):
            subject = str(event["subject"])
            steps.append(
                (REMEMBER_FORGOTTEN, (subject, event["unit"], int(event["seq"]), epoch_seconds(event["ts"])))
            )
            steps.append((INSERT, row_values(event, moment)))
            steps.append((TOMBSTONE, (subject,)))
            counts = self._transaction(steps)
            if counts[2]:
                log.info("subject_forgotten from %s: %d row(s) tombstoned", event["unit"], counts[2])
            return counts[1] > 0
        return self._transaction([(INSERT, row_values(event, moment))])[0] > 0

    def sweep(self, *, now: float | None = None) -> int:
        """Deletes rows (and remembered forgotten ids) older than the retention limit; how many rows."""
        cutoff = (time.time() if now is None else now) - self.keep_days * DAY_S
        deleted, _ = self._transaction(
            [
                ("DELETE FROM access_log WHERE ts_epoch < ?", (cutoff,)),
                ("DELETE FROM forgotten WHERE ts_epoch < ?", (cutoff,)),
            ]
        )
        return deleted

    def history(
        self,
        *,
        unit: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[AccessRow]:
        """Stored decisions, oldest first, filtered by unit, type and time."""
        where, params = [], []
        for column, value in (("unit = ?", unit), ("type = ?", type_), ("ts_epoch >= ?", since)):
            if value is not None:
                where.append(column)
                params.append(value)
        query = SELECT_ROWS  # the clauses are fixed text; every value is a parameter
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY ts_epoch, unit, seq LIMIT ?"
        with self._lock:
            rows = self._run(query, (*params, limit)).fetchall()
            self._db.commit()  # psycopg opened a transaction for the read; end it
        return [
            AccessRow(
                str(r[0]),
                int(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                r[5],
                bool(r[6]),
                int(r[7]),
                tuple(json.loads(r[8])),
            )
            for r in rows
        ]

    def count(self) -> int:
        with self._lock:
            value = int(self._run("SELECT COUNT(*) FROM access_log").fetchone()[0])
            self._db.commit()
        return value

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect_sqlite(path: Path) -> Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row is on disk before the MQTT acknowledgement that lets the broker forget the event.
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as error:
        raise ArchiveError(f"cannot open the archive {path}: {error}") from error
    return db


def _connect_postgres(url: str) -> Connection:
    try:
        import psycopg
    except ImportError:
        raise ArchiveError(
            "a postgresql:// archive needs psycopg: pip install 'entrance-camera[archive]'"
        ) from None
    try:
        connection: Connection = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as error:
        raise ArchiveError(f"cannot connect to the archive database: {error}") from error
    return connection


class Sweeper:
    """Runs ``archive.sweep()`` now and then every ``interval_s`` on its own thread, until stopped."""

    def __init__(self, archive: Archive, interval_s: float) -> None:
        self._archive = archive
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.swept = 0
        self._thread = threading.Thread(target=self._run, name="archive-sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                deleted = self._archive.sweep()
                self.swept += deleted
                if deleted:
                    log.info(
                        "retention: deleted %d row(s) older than %g days", deleted, self._archive.keep_days
                    )
            except Exception:
                log.exception("retention sweep failed; trying again at the next interval")
            if self._stop.wait(self._interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
