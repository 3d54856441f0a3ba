"""``device events archive`` and ``device events history``: the access log (``device.consumers.archive``).

archive: a consumer like ``events tail`` (consumer certificate, key registry, optional ``--share GROUP``)
that stores each verified event's decision in SQLite (``--db FILE``, default) or PostgreSQL
(``--db postgresql://...``), keeps ``--keep-days`` (default 30) and sweeps older rows on start and every
``--sweep-interval`` seconds. A row is committed before paho acknowledges the event to the broker; if the
database refuses a row the archiver stops at once with exit 1 and that event stays unacknowledged, so
the broker hands it to another member of the group or to this archiver once it is restarted.

history: reads the same database: ``--unit``, ``--type``, ``--since`` (a time or an age: 30m, 2h, 7d).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._broker_cli import (
    add_broker_options,
    add_share_option,
    consumer_settings,
    listen,
    print_cannot_connect,
    required_ca_file,
)
from device.consumers.archive import (
    DAY_S,
    DEFAULT_KEEP_DAYS,
    POSTGRES_SCHEMES,
    AccessRow,
    Archive,
    ArchiveError,
    Sweeper,
    parse_since,
)
from device.consumers.consumer import EventConsumer
from device.events.payloads import PayloadError
from device.events.signing import EventVerifier, load_registry

log = logging.getLogger(__name__)
DEFAULT_DB = "archive.db"


def register_archive(group: CommandRegistry) -> None:
    archive = group.add(
        "archive", run_archive, "store verified decisions in SQLite or PostgreSQL (access log)"
    )
    add_broker_options(archive, cert_help="consumer certificate", key_help="consumer private key")
    add_share_option(archive)
    archive.add_argument(
        "--db", default=DEFAULT_DB, help="SQLite file (default archive.db) or postgresql://..."
    )
    archive.add_argument("--keys", type=Path, required=True, help="unit key registry (fleet playbook)")
    archive.add_argument("--unit", default="+", help="one unit id, or + for all units (default)")
    archive.add_argument(
        "--keep-days", type=float, default=DEFAULT_KEEP_DAYS, help="retention: older rows are deleted (30)"
    )
    archive.add_argument("--sweep-interval", type=float, default=3600.0, help="seconds between sweeps (3600)")
    archive.add_argument("--client-id", default="", help="fixed client id: a persistent session")
    archive.add_argument("--session-expiry", type=int, default=0, help="seconds the broker keeps the queue")
    archive.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds (0: never)")

    history = group.add("history", show_history, "what the access log holds: --unit, --type, --since")
    history.add_argument(
        "--db", default=DEFAULT_DB, help="SQLite file (default archive.db) or postgresql://..."
    )
    history.add_argument("--unit", default=None, help="only this unit")
    history.add_argument("--type", default=None, help="only this decision type (recognized, unknown, ...)")
    history.add_argument(
        "--since", default=None, help="a time (2026-12-07T20:00:00Z) or an age (30m, 2h, 7d)"
    )
    history.add_argument("--limit", type=int, default=1000, help="at most this many rows (oldest first)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")


def run_archive(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ca_file = required_ca_file(args, config)
    if ca_file is None:
        return EXIT_USAGE
    try:
        keys = load_registry(args.keys) if args.keys.exists() else {}
        # Signature, unit and freshness; no seq order: the (unit, seq) key makes a replay a no-op.
        verifier = EventVerifier(
            keys, max_age_s=args.keep_days * DAY_S, registry_path=args.keys, check_order=False
        )
        archive = Archive.open(args.db, keep_days=args.keep_days)
    except (PayloadError, ArchiveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, PayloadError) else EXIT_FAILURE
    counts = {"stored": 0, "already_stored": 0, "rejected": 0}
    lock = threading.Lock()

    def store(event: dict[str, Any], topic: str) -> None:
        try:
            new = archive.store(event)
        except Exception as error:
            # Returning would let paho acknowledge an event that is not stored: stop unacknowledged.
            print(
                f"error: the archive refused event {event['unit']}#{event['seq']}: {error}", file=sys.stderr
            )
            sys.stderr.flush()
            os._exit(EXIT_FAILURE)
        with lock:
            counts["stored" if new else "already_stored"] += 1

    def rejected(topic: str, problem: str) -> None:
        with lock:
            counts["rejected"] += 1
        print(f"rejected on {ascii(topic)[1:-1]}: {ascii(problem)[1:-1]}", file=sys.stderr, flush=True)

    settings = consumer_settings(
        args,
        config,
        ca_file,
        unit=args.unit,
        client_id=args.client_id,
        session_expiry_s=args.session_expiry,
        share_group=args.share,
    )
    sweeper = Sweeper(archive, args.sweep_interval).start()
    try:
        consumer = EventConsumer(
            settings,
            store,
            on_invalid=rejected,
            on_connection=lambda what: print(what, file=sys.stderr, flush=True),
            verifier=verifier,
        ).start()
    except (OSError, ValueError) as error:
        sweeper.stop()
        archive.close()
        print_cannot_connect(settings, error)
        return EXIT_FAILURE
    print(f"archiving to {_shown(args.db)}, keeping {args.keep_days:g} days", file=sys.stderr, flush=True)
    try:
        listened = listen(consumer, threading.Event(), args.timeout, label="archive listening on")
    finally:
        sweeper.stop()
        archive.close()
    with lock:
        print(json.dumps({**counts, "swept": sweeper.swept}), flush=True)
    return listened


def _shown(target: str) -> str:
    """The database without a password (postgresql://user:secret@host/db -> postgresql://user@host/db)."""
    scheme, sep, rest = target.partition("://")
    if not sep or "@" not in rest:
        return target
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"


def format_row(row: AccessRow) -> str:
    subject = "(forgotten)" if row.forgotten else (row.subject or "-")
    reasons = ",".join(row.reasons) or "-"
    return (
        f"{row.ts} {row.unit} #{row.seq} {row.type} subject={subject} frames={row.frames} reasons={reasons}"
    )


def show_history(args: argparse.Namespace) -> int:
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not args.db.startswith(POSTGRES_SCHEMES) and not Path(args.db).exists():
        print(f"error: no archive at {args.db} (device events archive --db makes it)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        archive = Archive.open(args.db)
        rows = archive.history(unit=args.unit, type_=args.type, since=since, limit=args.limit)
        archive.close()
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for row in rows:
        print(json.dumps(row.as_json(), sort_keys=True) if args.json else ascii(format_row(row))[1:-1])
    return EXIT_OK
