"""``device door --unit ID --relay-gpio N [--policy FILE]``: the reference door consumer.

Subscribes to one unit's events with a consumer certificate, verifies each (signature against the key
registry, unit, freshness, ``seq`` order), applies the policy (``device.events.door``) and pulses the
relay through gpiozero. Fail-secure: the relay is off at start, after each pulse and on exit. Keeps its
own audit (JSON lines) of every open, every refusal and every rejected payload.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.events.consumer import ConsumerSettings, EventConsumer
from device.events.door import Door, DoorAudit, DoorPolicy, gpio_relay
from device.events.payloads import PayloadError
from device.events.signing import DEFAULT_MAX_AGE_S, EventVerifier, load_registry


def register(commands: CommandRegistry) -> None:
    parser = commands.add("door", run_door, "reference door consumer: verified events open a relay by policy")
    parser.add_argument("--unit", required=True, help="the unit whose events may open this door")
    parser.add_argument("--relay-gpio", type=int, required=True, help="BCM pin number of the relay")
    parser.add_argument("--policy", type=Path, help="JSON policy: subjects, hours, claim_required, pulse_s")
    parser.add_argument("--keys", type=Path, required=True, help="unit key registry (fleet playbook)")
    parser.add_argument("--audit", type=Path, default=Path("door-audit.jsonl"), help="the door's audit file")
    parser.add_argument("--host", help="broker host (default: mqtt.host of the config)")
    parser.add_argument("--port", type=int, help="broker port (default: mqtt.port)")
    parser.add_argument("--ca", type=Path, help="CA certificate (default: mqtt.tls.ca_file)")
    parser.add_argument("--cert", type=Path, required=True, help="consumer certificate")
    parser.add_argument("--key", type=Path, required=True, help="consumer private key")
    parser.add_argument("--prefix", help="topic prefix (default: mqtt.topic_prefix)")
    parser.add_argument("--max-age", type=float, default=60.0, help="refuse events older than this (s)")
    parser.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds (0: never)")


def run_door(args: argparse.Namespace, *, pin_factory: object = None) -> int:
    config = config_from_args(args)
    ca_file = args.ca or config.mqtt.tls.ca_file
    if ca_file is None:
        print("error: no CA certificate: pass --ca or set mqtt.tls.ca_file", file=sys.stderr)
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
    settings = ConsumerSettings(
        host=args.host or config.mqtt.host,
        port=args.port or config.mqtt.port,
        ca_file=ca_file,
        cert_file=args.cert,
        key_file=args.key,
        prefix=args.prefix or config.mqtt.topic_prefix,
        unit=args.unit,
    )
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
        print(f"error: cannot connect to {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if consumer.subscribed.wait(30.0):
        print(f"door listening on {consumer.topic_filter}", file=sys.stderr, flush=True)
    try:
        stop.wait(args.timeout or None)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
        door.close()
    return EXIT_OK
