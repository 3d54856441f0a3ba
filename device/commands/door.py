"""``device door --unit ID --relay-gpio N [--policy FILE]``: the reference door consumer.

Subscribes to one unit's events with a consumer certificate, verifies each (signature against the key
registry, unit, freshness, ``seq`` order), applies the policy (``device.consumers.door``) and pulses the
relay through gpiozero. Fail-secure: the relay is off at start, after each pulse and on exit. Keeps its
own audit (JSON lines) of every open, every refusal and every rejected payload.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from device.cli import EXIT_FAILURE, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._broker_cli import (
    add_broker_options,
    add_share_option,
    consumer_settings,
    listen,
    print_cannot_connect,
    required_ca_file,
)
from device.consumers.consumer import EventConsumer
from device.consumers.door import Door, DoorAudit, DoorPolicy, gpio_relay
from device.events.payloads import PayloadError
from device.events.signing import DEFAULT_MAX_AGE_S, EventVerifier, load_registry


def register(commands: CommandRegistry) -> None:
    parser = commands.add("door", run_door, "reference door consumer: verified events open a relay by policy")
    parser.add_argument("--unit", required=True, help="the unit whose events may open this door")
    parser.add_argument("--relay-gpio", type=int, required=True, help="BCM pin number of the relay")
    parser.add_argument("--policy", type=Path, help="JSON policy: subjects, hours, claim_required, pulse_s")
    parser.add_argument("--keys", type=Path, required=True, help="unit key registry (fleet playbook)")
    parser.add_argument("--audit", type=Path, default=Path("door-audit.jsonl"), help="the door's audit file")
    add_broker_options(parser, cert_help="consumer certificate", key_help="consumer private key")
    add_share_option(parser)
    parser.add_argument("--max-age", type=float, default=60.0, help="refuse events older than this (s)")
    parser.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds (0: never)")


def run_door(args: argparse.Namespace, *, pin_factory: object = None) -> int:
    config = config_from_args(args)
    ca_file = required_ca_file(args, config)
    if ca_file is None:
        return EXIT_USAGE
    try:
        policy = DoorPolicy.load(args.policy)
        verifier = EventVerifier(load_registry(args.keys), max_age_s=min(args.max_age, DEFAULT_MAX_AGE_S))
    except (OSError, ValueError, ValidationError, PayloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    audit = DoorAudit(args.audit)
    verifier.remember(audit.last_seqs())
    door = Door(policy, gpio_relay(args.relay_gpio, pin_factory), audit)
    settings = consumer_settings(args, config, ca_file, unit=args.unit, share_group=args.share)
    stop = threading.Event()
    try:
        consumer = EventConsumer(
            settings,
            door.on_event,
            on_invalid=door.on_rejected,
            on_connection=lambda what: print(what, file=sys.stderr, flush=True),
            verifier=verifier,
        ).start()
    except (OSError, ValueError) as error:
        door.close()
        print_cannot_connect(settings, error)
        return EXIT_FAILURE
    try:
        return listen(consumer, stop, args.timeout, label="door listening on")
    finally:
        door.close()
