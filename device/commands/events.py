"""``device events tail [--json]``: what a consumer sees — schema-checked, deduplicated events.

Connects with a *consumer* certificate (the unit's own certificate may not read events), subscribes to
``<prefix>/<unit|+>/events``, validates each payload against the event schema, drops redeliveries by
``event_id``, verifies each event's Ed25519 signature against the unit key registry (``--keys``), its
unit, freshness and ``seq`` order, and prints one line per event. Anything else (invalid, unsigned,
wrongly signed, replayed, other-unit, stale) is one line on stderr, never printed as an event.
``device events key`` prints this unit's public event key (made on first use) for the registry.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._archive_cli import register_archive
from device.commands._broker_cli import (
    add_broker_options,
    add_share_option,
    consumer_settings,
    listen,
    print_cannot_connect,
    required_ca_file,
)
from device.consumers.consumer import EventConsumer
from device.events.payloads import PayloadError
from device.events.signing import (
    DEFAULT_MAX_AGE_S,
    EventVerifier,
    load_registry,
    register_key,
    unit_event_key,
)
from device.layout import StateLayout

UNIT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # the events schema's unit pattern


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("events", "consume the events units publish")
    parser = group.add("tail", tail_events, "print validated, deduplicated events as they arrive")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_broker_options(parser, cert_help="consumer certificate", key_help="consumer private key")
    add_share_option(parser)
    parser.add_argument("--unit", default="+", help="one unit id, or + for all units (default)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    parser.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds (0: never)")
    parser.add_argument(
        "--client-id", default="", help="fixed client id: a persistent session with --session-expiry"
    )
    parser.add_argument("--session-expiry", type=int, default=0, help="seconds the broker keeps the queue")
    parser.add_argument(
        "--keys", type=Path, required=True, help="unit key registry (JSON made by the fleet playbook)"
    )
    parser.add_argument(
        "--max-age", type=float, default=DEFAULT_MAX_AGE_S, help="refuse events older than this (seconds)"
    )
    register_archive(group)
    key = group.add("key", print_event_key, "print this unit's public event key (made on first use)")
    key.add_argument(
        "--register",
        type=Path,
        default=None,
        metavar="REGISTRY",
        help="also add it to this key registry file",
    )
    merge = group.add(
        "register-key", register_unit_key, "add one unit's public event key to a registry (fleet controller)"
    )
    merge.add_argument("--keys", type=Path, required=True, help="the unit key registry to merge into")
    merge.add_argument("--unit", required=True, help="unit id")
    merge.add_argument("--public-key", required=True, help="its public key (`device events key` on the unit)")
    merge.add_argument(
        "--rotate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replace a different key already registered for the unit (after regenerating it on purpose)",
    )


def register_unit_key(args: argparse.Namespace) -> int:
    """On the fleet controller: merges one unit's public key into the registry, never drops the others."""
    outcome = register_key(args.keys, require_unit_id(args.unit), args.public_key, rotate=args.rotate)
    print(f"{outcome}: {args.unit} in {args.keys}")
    return EXIT_OK


def require_unit_id(unit: str) -> str:
    if not UNIT_ID.fullmatch(unit):
        raise PayloadError(f"{unit!a} is not a unit id (lower-case letters, digits and -)")
    return unit


def print_event_key(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        key = unit_event_key(StateLayout.from_config(config))
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if args.register is not None:
        try:
            register_key(args.register, config.unit.id, key.public_text)
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILURE
    print(json.dumps({"unit": config.unit.id, "public_key": key.public_text}))
    return EXIT_OK


def format_event(event: dict[str, Any]) -> str:
    subject = event["subject"] or "-"
    similarity = "-" if event["similarity"] is None else f"{event['similarity']:.3f}"
    reasons = ",".join(event["reasons"]) or "-"
    return (
        f"{event['ts']} {event['unit']} #{event['seq']} {event['type']} subject={subject} "
        f"similarity={similarity} frames={event['frames']} reasons={reasons}"
    )


def tail_events(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ca_file = required_ca_file(args, config)
    if ca_file is None:
        return EXIT_USAGE
    settings = consumer_settings(
        args,
        config,
        ca_file,
        unit=args.unit,
        client_id=args.client_id,
        session_expiry_s=args.session_expiry,
        share_group=args.share,
    )
    try:
        # A registry that does not exist yet is empty: units are checked once they are registered in it.
        keys = load_registry(args.keys) if args.keys.exists() else {}
        verifier = EventVerifier(keys, max_age_s=args.max_age, registry_path=args.keys)
    except PayloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    done = threading.Event()
    printed = 0

    def show(event: dict[str, Any], topic: str) -> None:
        nonlocal printed
        line = json.dumps(event, sort_keys=True) if args.json else ascii(format_event(event))[1:-1]
        print(line, flush=True)
        printed += 1
        if args.count and printed >= args.count:
            done.set()

    def invalid(topic: str, problem: str) -> None:
        # ascii(): a payload's text never reaches the terminal raw (escape sequences, lone surrogates).
        print(f"rejected on {ascii(topic)[1:-1]}: {ascii(problem)[1:-1]}", file=sys.stderr, flush=True)

    def connection(what: str) -> None:
        print(f"{what}", file=sys.stderr, flush=True)

    try:
        consumer = EventConsumer(
            settings, show, on_invalid=invalid, on_connection=connection, verifier=verifier
        ).start()
    except (OSError, ValueError) as error:
        print_cannot_connect(settings, error)
        return EXIT_FAILURE
    if listen(consumer, done, args.timeout, label="listening on") != EXIT_OK:
        return EXIT_FAILURE
    return EXIT_OK if not args.count or printed >= args.count else EXIT_FAILURE
