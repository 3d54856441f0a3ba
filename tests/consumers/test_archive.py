"""Issue 27: the access log in SQLite and in a real PostgreSQL (started by the test from the Debian
package): one row per (unit, seq) however often an event arrives, decisions only, rows past the
retention limit gone after a sweep, and a unit's signed ``subject_forgotten`` tombstoning the subject
in rows stored before it and in older events that arrive after it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_support import PostgresServer, postgres_bin

from device.consumers.archive import DAY_S, Archive, parse_since
from device.events.forgotten import build_subject_forgotten
from device.events.payloads import build_event, decode, encode
from device.events.signing import EventKey
from device.types import Decision, DecisionType

NOW = time.time()


def visit(key: EventKey, unit: str, seq: int, subject: str | None, *, age_s: float = 0.0) -> dict[str, Any]:
    kind = DecisionType.RECOGNIZED if subject else DecisionType.UNKNOWN
    event = build_event(
        Decision(kind, subject, 0.91 if subject else None, 0.2 if subject else None, 7, ("stable",), seq),
        seq=seq,
        unit=unit,
        models={"detector": "d@1"},
        gallery_version="g1",
        when=NOW - age_s,
    )
    return key.sign(event)


def forgotten(key: EventKey, unit: str, seq: int, subject: str) -> dict[str, Any]:
    return key.sign(
        build_subject_forgotten(
            seq=seq, unit=unit, subject_id=subject, reason="forgotten_on_request", when=NOW
        )
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: run `bash deploy/dev/system-packages.sh`")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    if request.param == "sqlite":
        store = Archive.open(str(tmp_path / "archive.db"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        store = Archive.open(server.url)
        for table in ("access_log", "forgotten"):  # one server per module: each test starts empty
            store._run(f"DELETE FROM {table}")
        store._db.commit()
    yield store
    store.close()


@pytest.fixture
def key(tmp_path: Path) -> EventKey:
    return EventKey.load_or_create(tmp_path / "unit.key")


def test_a_redelivered_event_is_one_row(archive: Archive, key: EventKey) -> None:
    event = visit(key, "lobby-1", 1, "s-anna")
    assert archive.store(event) is True
    for _ in range(3):  # QoS 1 redelivery, the bridge's replay, another archiver of the group
        assert archive.store(event) is False
    assert archive.store(visit(key, "lobby-2", 1, "s-anna")) is True  # same seq, another unit
    assert archive.count() == 2


def test_rows_hold_the_decision_and_no_scores(archive: Archive, key: EventKey) -> None:
    archive.store(visit(key, "lobby-1", 5, "s-anna"))
    (row,) = archive.history()
    assert row.as_json() == {
        "unit": "lobby-1",
        "seq": 5,
        "event_id": row.event_id,
        "ts": row.ts,
        "type": "recognized",
        "subject": "s-anna",
        "forgotten": False,
        "frames": 7,
        "reasons": ["stable"],
    }


def test_subject_forgotten_tombstones_past_rows_and_later_arrivals(archive: Archive, key: EventKey) -> None:
    archive.store(visit(key, "lobby-1", 1, "s-anna"))
    archive.store(visit(key, "lobby-1", 2, "s-bert"))
    archive.store(visit(key, "lobby-2", 1, "s-anna"))
    archive.store(visit(key, "lobby-1", 3, None))
    # The forget event travels signed and schema-checked like any event.
    notice = decode("event", encode("event", forgotten(key, "lobby-1", 5, "s-anna")))
    assert archive.store(notice) is True
    # An older event still queued somewhere (seq 4, before the forget) arrives afterwards.
    archive.store(visit(key, "lobby-1", 4, "s-anna"))
    rows = {(row.unit, row.seq): row for row in archive.history()}
    assert {k for k, row in rows.items() if row.forgotten} == {
        ("lobby-1", 1),
        ("lobby-2", 1),
        ("lobby-1", 4),
        ("lobby-1", 5),
    }
    assert all(row.subject is None for row in rows.values() if row.forgotten)
    assert rows[("lobby-1", 2)].subject == "s-bert"  # others keep their ids
    assert rows[("lobby-1", 1)].type == "recognized"  # the door still opened; no longer for whom
    assert rows[("lobby-1", 5)].type == "subject_forgotten"
    assert not [row for row in archive.history() if row.subject == "s-anna"]


def test_rows_past_the_retention_limit_go_at_the_next_sweep(archive: Archive, key: EventKey) -> None:
    archive.store(visit(key, "lobby-1", 1, "s-anna", age_s=29 * DAY_S))
    archive.store(visit(key, "lobby-1", 2, "s-anna", age_s=10 * DAY_S))
    archive.store(visit(key, "lobby-1", 3, "s-anna"))
    assert archive.store(visit(key, "lobby-1", 9, "s-anna", age_s=31 * DAY_S)) is False  # never stored
    assert archive.count() == 3
    assert archive.sweep(now=NOW) == 0
    assert archive.sweep(now=NOW + 2 * DAY_S) == 1  # the 29-day-old row is now 31 days old
    assert [row.seq for row in archive.history()] == [2, 3]
    assert archive.sweep(now=NOW + 31 * DAY_S) == 2
    assert archive.count() == 0


def test_history_filters_by_unit_type_and_time(archive: Archive, key: EventKey) -> None:
    archive.store(visit(key, "lobby-1", 1, "s-anna", age_s=3 * 3600))
    archive.store(visit(key, "lobby-1", 2, None, age_s=3600))
    archive.store(visit(key, "garage", 1, "s-bert", age_s=60))
    assert [r.seq for r in archive.history(unit="lobby-1")] == [1, 2]
    assert [r.unit for r in archive.history(type_="recognized")] == ["lobby-1", "garage"]
    assert [(r.unit, r.seq) for r in archive.history(since=parse_since("2h", NOW))] == [
        ("lobby-1", 2),
        ("garage", 1),
    ]
    assert len(archive.history(limit=1)) == 1


def test_since_takes_a_time_or_an_age() -> None:
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200.0
    assert parse_since("2026-12-07T20:00:00Z", 0.0) == parse_since("2026-12-07T20:00:00+00:00", 0.0)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", 0.0)


def test_the_archive_module_stores_no_score_or_liveness_column() -> None:
    from device.consumers import archive as module

    schema = " ".join(module.SCHEMA).lower()
    for field in ("similarity", "margin", "liveness", "score", "embedding", "image"):
        assert field not in schema
