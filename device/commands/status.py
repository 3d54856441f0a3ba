"""``device status`` and ``device outbox show|drop SEQ…``: a unit's health without an MQTT script.

``device status --cert C --key K`` reads the unit's retained status and health from the broker with a
consumer identity (the unit's own certificate may not read them). Without ``--cert`` it shows the local
state on the unit: the outbox (events not yet acknowledged by the broker).

``device outbox show`` lists queued events (seq, age, topic, type; never more than the event carries);
``device outbox drop SEQ…`` deletes them, e.g. events queued under a wrong unit id that the broker
refuses on every start. Every drop is written to the unit's audit log first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._broker_cli import (
    add_broker_options,
    broker_ca_file,
    consumer_settings,
    print_cannot_connect,
)
from device.config import UnitConfig
from device.consumers.status_reader import read_retained
from device.errors import require_plain
from device.events.outbox import Outbox, OutboxEntry, OutboxError
from device.layout import StateLayout

T = TypeVar("T")


def register(commands: CommandRegistry) -> None:
    status = commands.add(
        "status", show_status, "a unit's retained status and health from the broker, or its local state"
    )
    add_broker_options(
        status,
        cert_help="consumer certificate (without it: the local state)",
        key_help="consumer private key",
        required=False,
    )
    status.add_argument("--unit", help="unit id (default: unit.id of the config)")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")
    status.add_argument("--json", action="store_true", help="print the payloads as JSON")
    outbox = commands.add_group("outbox", "inspect or clear the events waiting for the broker")
    outbox.add("show", show_outbox, "list the queued events (oldest first)")
    drop = outbox.add("drop", drop_from_outbox, "delete queued events by seq (audited)")
    drop.add_argument("seqs", nargs="+", type=int, metavar="SEQ")
    drop.add_argument("--operator", required=True, help="who drops them (written to the audit log)")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def describe_health(health: dict[str, Any]) -> list[str]:
    outbox = health.get("outbox", {})
    mqtt = health.get("mqtt", {})
    alarms = health.get("alarms", [])
    lines = [
        f"health at {health.get('ts')}: up {_age(health.get('uptime_s'))}",
        f"  broker connection: {'connected' if mqtt.get('connected') else 'not connected'}, "
        f"reconnects {mqtt.get('reconnects', 0)}, refused {mqtt.get('refused', 0)}",
        f"  outbox: {outbox.get('depth', 0)} queued (oldest {_age(outbox.get('oldest_age_s'))}), "
        f"dropped {outbox.get('dropped', 0)}",
        f"  alarms: {', '.join(alarms) if alarms else 'none'}",
    ]
    shown = {"schema", "unit", "ts", "uptime_s", "outbox", "mqtt", "alarms"}
    for key in sorted(set(health) - shown):
        lines.append(f"  {key}: {json.dumps(health[key], sort_keys=True)}")
    return lines


def show_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.cert is None:
        return _local_status(config)
    ca_file = broker_ca_file(args, config)
    if ca_file is None or args.key is None:
        print("error: --cert needs --key, and a CA (--ca or mqtt.tls.ca_file)", file=sys.stderr)
        return EXIT_USAGE
    unit = args.unit or config.unit.id
    settings = consumer_settings(args, config, ca_file, unit=unit)
    try:
        state = read_retained(settings, unit, args.timeout)
    except (OSError, ValueError) as error:
        print_cannot_connect(settings, error)
        return EXIT_FAILURE
    for problem in state.problems:
        print(f"error: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(state.payloads, sort_keys=True))
    else:
        status = state.payloads.get("status")
        if status is None:
            print(f"unit {unit}: no status on the broker (never connected, or another prefix/unit id)")
        else:
            print(f"unit {unit}: {status.get('state')} ({status.get('reason')}) since {status.get('ts')}")
        health = state.payloads.get("health")
        if health is not None:
            print("\n".join(describe_health(health)))
    return EXIT_OK if "status" in state.payloads and not state.problems else EXIT_FAILURE


def _open_outbox(config: UnitConfig) -> Outbox | None:
    path = config.mqtt.outbox_path
    if not path.exists():
        return None
    return Outbox(path, max_rows=config.mqtt.outbox_max_rows, max_bytes=config.mqtt.outbox_max_bytes)


def _read_outbox(config: UnitConfig, read: Callable[[Outbox], T]) -> T | None:
    """What ``read`` finds in the unit's outbox (closed again right after); None when it has none yet."""
    outbox = _open_outbox(config)
    if outbox is None:
        return None
    try:
        return read(outbox)
    finally:
        outbox.close()


def _outbox_unreadable(config: UnitConfig, error: OutboxError) -> int:
    print(f"error: outbox {config.mqtt.outbox_path}: {error}", file=sys.stderr)
    return EXIT_FAILURE


def _local_status(config: UnitConfig) -> int:
    print(f"unit {config.unit.id} (local state; pass --cert/--key of a consumer for the broker's view)")
    try:
        stats = _read_outbox(config, Outbox.stats)
    except OutboxError as error:
        return _outbox_unreadable(config, error)
    if stats is None:
        print(f"  outbox: none yet ({config.mqtt.outbox_path})")
        return EXIT_OK
    print(
        f"  outbox: {stats.depth} queued (oldest {_age(stats.oldest_age_s)}), last seq {stats.last_seq}, "
        f"dropped {stats.dropped}"
    )
    return EXIT_OK


def _event_type(payload: bytes) -> str:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "?"
    return str(data.get("type", "?")) if isinstance(data, dict) else "?"


def all_pending(outbox: Outbox) -> list[OutboxEntry]:
    entries: list[OutboxEntry] = []
    while batch := outbox.pending(after_seq=entries[-1].seq if entries else 0, limit=500):
        entries += batch
    return entries


def show_outbox(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    try:
        entries = _read_outbox(config, all_pending)
    except OutboxError as error:
        return _outbox_unreadable(config, error)
    if entries is None:
        print(f"no outbox yet ({config.mqtt.outbox_path}): nothing queued")
        return EXIT_OK
    now = time.time()  # after the read: no queued event can look younger than zero
    for entry in entries:
        print(f"#{entry.seq}  {_age(now - entry.created)} old  {entry.topic}  {_event_type(entry.payload)}")
    print(f"{len(entries)} queued")
    return EXIT_OK


def drop_from_outbox(args: argparse.Namespace) -> int:
    from device.identity.audit import AuditLog
    from device.identity.masterkey import MasterKeyError, load_master_key

    config = config_from_args(args, required=True)
    outbox = _open_outbox(config)
    if outbox is None:
        print(f"error: no outbox at {config.mqtt.outbox_path}", file=sys.stderr)
        return EXIT_FAILURE
    queued = {
        entry.seq for entry in outbox.pending(after_seq=min(args.seqs) - 1, limit=len(args.seqs) * 4 + 100)
    }
    missing = sorted(set(args.seqs) - queued)
    if missing:
        print(
            f"error: not queued: {', '.join(f'#{s}' for s in missing)}; nothing was dropped", file=sys.stderr
        )
        outbox.close()
        return EXIT_FAILURE
    try:
        master_key = load_master_key(config.gallery.master_key_path, config.gallery.key_source)
        audit = AuditLog.of_unit(StateLayout.from_config(config), master_key)
    except MasterKeyError as error:
        print(f"error: the drop cannot be audited: {error}; nothing was dropped", file=sys.stderr)
        outbox.close()
        return EXIT_FAILURE
    seqs = sorted(set(args.seqs))
    listing = ",".join(str(s) for s in seqs)
    audit.append(
        "outbox_drop",
        require_plain(args.operator, "--operator"),
        {"count": len(seqs), "reason": f"seq {listing}"[:200]},
    )
    dropped = [seq for seq in seqs if outbox.ack(seq)]
    outbox.close()
    print(f"dropped {len(dropped)} queued event(s): {', '.join(f'#{s}' for s in dropped)} (audited)")
    return EXIT_OK
