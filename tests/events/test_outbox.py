"""The durable outbox on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from device.events.outbox import Outbox


def payload_of(size: int) -> bytes:
    return b"x" * size


def add(outbox: Outbox, size: int = 100) -> int:
    return outbox.append("entrance/u/events", lambda seq: (f"id-{seq}", payload_of(size))).seq


def test_the_database_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    add(outbox)
    outbox.close()
    db = sqlite3.connect(tmp_path / "outbox.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "outbox.db").stat().st_mode & 0o777 == 0o600


def test_seq_increases_across_restarts_even_when_everything_was_delivered(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    first = [add(outbox) for _ in range(3)]
    for seq in first:
        assert outbox.ack(seq)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert add(reopened) == 4
    assert first == [1, 2, 3]


def test_pending_replays_in_seq_order_after_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    for _ in range(5):
        add(outbox)
    outbox.ack(2)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert [entry.seq for entry in reopened.pending()] == [1, 3, 4, 5]
    assert [entry.seq for entry in reopened.pending(after_seq=3, limit=1)] == [4]
    assert reopened.stats().depth == 4 and reopened.stats().bytes == 400


def test_the_payload_is_built_with_the_seq_it_is_stored_under(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    entry = outbox.append("t", lambda seq: (f"id-{seq}", f'{{"seq":{seq}}}'.encode()))
    assert entry.payload == b'{"seq":1}' and outbox.pending()[0].payload == b'{"seq":1}'


def test_a_failing_build_stores_nothing_and_uses_no_seq(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")

    def broken(seq: int) -> tuple[str, bytes]:
        raise ValueError("bad event")

    with pytest.raises(ValueError, match="bad event"):
        outbox.append("t", broken)
    assert outbox.stats().depth == 0
    assert add(outbox) == 1


def test_a_full_outbox_drops_the_oldest_rows_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_rows=3)
    for _ in range(5):
        add(outbox)
    assert [entry.seq for entry in outbox.pending()] == [3, 4, 5]
    assert outbox.stats().dropped == 2
    outbox.close()
    assert Outbox(tmp_path / "outbox.db", max_rows=3).stats().dropped == 2  # survives restarts


def test_the_byte_bound_drops_oldest_first_too(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1000)
    for _ in range(4):
        add(outbox, size=300)
    stats = outbox.stats()
    assert [entry.seq for entry in outbox.pending()] == [2, 3, 4]
    assert stats.bytes == 900 and stats.dropped == 1


def test_acknowledging_twice_or_a_dropped_row_is_harmless(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_rows=1)
    add(outbox)
    add(outbox)
    assert outbox.ack(1) is False  # dropped already
    assert outbox.ack(2) is True
    assert outbox.ack(2) is False
    assert outbox.stats().depth == 0 and outbox.stats().bytes == 0


def test_a_corrupt_outbox_file_gives_a_clear_error(tmp_path: Path) -> None:
    from device.events.outbox import OutboxError

    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(path)


def test_the_outbox_connection_itself_commits_with_synchronous_full(tmp_path: Path) -> None:
    """README claim: synchronous=FULL. It is a per-connection setting, so ask the outbox's own connection."""
    outbox = Outbox(tmp_path / "outbox.db")
    full = 2
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == full
    assert outbox._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    outbox.close()


def test_an_acknowledged_event_leaves_no_readable_copy_in_any_outbox_file(tmp_path: Path) -> None:
    """Issue 14, finding 4: acknowledged rows stayed readable in outbox.db-wal."""
    marker = b"decision-of-visit-7f3a9c-that-was-delivered"
    outbox = Outbox(tmp_path / "outbox.db")
    seqs = [
        outbox.append("entrance/u/events", lambda seq: (f"id-{seq}", marker + bytes([seq]))).seq for _ in "ab"
    ]
    files_before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert any(marker in data for data in files_before.values())  # the search can find it

    for seq in seqs:
        assert outbox.ack(seq)
    for path in tmp_path.iterdir():
        assert marker not in path.read_bytes(), f"{path.name} still holds an acknowledged event"
    outbox.close()


def test_the_db_and_its_wal_and_shm_are_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    previous = os.umask(0o022)
    try:
        outbox = Outbox(tmp_path / "outbox.db")
        add(outbox)
        modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
        outbox.close()
    finally:
        os.umask(previous)
    assert {"outbox.db", "outbox.db-wal", "outbox.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_acknowledged_events_leave_no_copy_while_others_are_still_queued(tmp_path: Path) -> None:
    """Issue 25, point 6: with 50 queued and 49 acknowledged, all 49 were readable in outbox.db-wal."""
    outbox = Outbox(tmp_path / "outbox.db")
    marker = b"visit-of-resident-4471-delivered-"
    for _ in range(50):
        outbox.append("entrance/u/events", lambda seq: (f"id-{seq}", marker + b"%03d" % seq))
    for seq in range(1, 50):
        assert outbox.ack(seq)
    raw = b"".join(path.read_bytes() for path in sorted(tmp_path.iterdir()) if path.is_file())
    assert marker + b"050" in raw  # the one still queued is there: the search can find a payload
    left = [seq for seq in range(1, 50) if marker + b"%03d" % seq in raw]
    assert left == [], f"acknowledged events still readable on disk: {left}"
    outbox.close()


def test_a_batch_acknowledged_without_erasing_is_erased_by_erase_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    marker = b"batched-ack-"
    for _ in range(5):
        outbox.append("entrance/u/events", lambda seq: (f"id-{seq}", marker + b"%d" % seq))
    for seq in range(1, 5):
        assert outbox.ack(seq, erase_now=False)
    outbox.erase_acknowledged()
    raw = b"".join(path.read_bytes() for path in sorted(tmp_path.iterdir()) if path.is_file())
    assert marker + b"5" in raw
    assert [seq for seq in range(1, 5) if marker + b"%d" % seq in raw] == []
    outbox.close()
