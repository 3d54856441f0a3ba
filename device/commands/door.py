"""``device door --unit ID --relay-gpio N [--policy FILE] [--audit FILE] [--start-fresh]``: the reference
door consumer.

Subscribes to one unit's events with a consumer certificate, verifies each (signature against the key
registry, unit, freshness, ``seq`` order), applies the policy (``device.consumers.door``) and pulses the
relay through gpiozero. Fail-secure: the relay is off at start, after each pulse and on exit. Keeps its
own audit (JSON lines) of every open, every refusal and every rejected payload, and prints one line per
decision (opened / kept shut and why).

A service (deploy/systemd/entrance-camera-door.service): it announces ``online`` (retained) on
``<prefix>/consumers/<its certificate's CN>/status`` once it listens, ``offline`` on a clean stop and
as its last will; under systemd it reports READY=1 once subscribed and feeds the watchdog only while
the subscription is confirmed, so a door that lost its broker for longer than WatchdogSec is restarted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

from device.atomicio import create_exclusively
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
from device.errors import UserError
from device.events.payloads import PayloadError
from device.events.signing import DEFAULT_MAX_AGE_S, EventVerifier, load_registry
from device.runtime.sdnotify import Notifier, SystemdNotifier


def register(commands: CommandRegistry) -> None:
    parser = commands.add("door", run_door, "reference door consumer: verified events open a relay by policy")
    parser.add_argument("--unit", required=True, help="the unit whose events may open this door")
    parser.add_argument("--relay-gpio", type=int, required=True, help="BCM pin number of the relay")
    parser.add_argument("--policy", type=Path, help="JSON policy: subjects, hours, claim_required, pulse_s")
    parser.add_argument("--keys", type=Path, required=True, help="unit key registry (fleet playbook)")
    parser.add_argument(
        "--audit",
        type=Path,
        default=None,
        help="the door's audit file, also its record of each unit's last seq "
        f"(default: $STATE_DIRECTORY or {DEFAULT_DOOR_STATE}, /{AUDIT_FILE_NAME})",
    )
    parser.add_argument(
        "--start-fresh",
        action="store_true",
        help="first start only: make the audit file; without it the door refuses to start with none",
    )
    add_broker_options(parser, cert_help="consumer certificate", key_help="consumer private key")
    add_share_option(parser)
    parser.add_argument("--max-age", type=float, default=60.0, help="refuse events older than this (s)")
    parser.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds (0: never)")


class DoorStartError(UserError):
    """The door would start without its record of each unit's last seq."""

    exit_code = EXIT_USAGE


DEFAULT_DOOR_STATE = Path("/var/lib/entrance-door")
AUDIT_FILE_NAME = "door-audit.jsonl"


def default_audit_path(environ: Mapping[str, str]) -> Path:
    """In the door's state folder (systemd's ``StateDirectory=``, else ``DEFAULT_DOOR_STATE``), never
    relative to whatever folder the door happened to be started from: started elsewhere, it would find
    no record of the last seq and take a replay."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return (Path(state) if state else DEFAULT_DOOR_STATE) / AUDIT_FILE_NAME


def open_seq_record(path: Path, *, start_fresh: bool) -> DoorAudit:
    """The door's audit; a missing one is made only on ``--start-fresh``, which an existing one refuses.

    Without its record of each unit's last ``seq`` the door would take any recorded event younger than
    ``--max-age`` once more: a lost or misplaced record must be noticed, not silently begun again."""
    if path.exists() and start_fresh:
        raise DoorStartError(
            f"--start-fresh, but the door's seq record {path} exists: start without --start-fresh "
            "(keep --start-fresh out of service files; it is for the first start only)"
        )
    if not path.exists():
        if not start_fresh:
            raise DoorStartError(
                f"the door's seq record {path} does not exist: without it a replayed event younger than "
                "--max-age would open the door. Give the right --audit, or on the very first start "
                "(or after knowingly losing the record) add --start-fresh"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_exclusively(path, b"")
    return DoorAudit(path)


def run_door(
    args: argparse.Namespace, *, pin_factory: object = None, notifier: Notifier | None = None
) -> int:
    """``notifier``: the service manager (default: systemd's, from the environment; silent outside it)."""
    config = config_from_args(args)
    ca_file = required_ca_file(args, config)
    if ca_file is None:
        return EXIT_USAGE
    try:
        policy = DoorPolicy.load(args.policy)
        # registry_path: a unit registered after the door started (the first unit's walkthrough) is read
        # from the same file when its first event comes; a key once trusted is never replaced that way.
        verifier = EventVerifier(
            load_registry(args.keys), max_age_s=min(args.max_age, DEFAULT_MAX_AGE_S), registry_path=args.keys
        )
    except (OSError, ValueError, ValidationError, PayloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    audit_path = args.audit if args.audit is not None else default_audit_path(os.environ)
    audit = open_seq_record(audit_path, start_fresh=getattr(args, "start_fresh", False))
    verifier.remember(audit.last_seqs())
    door = Door(policy, gpio_relay(args.relay_gpio, pin_factory), audit, report=_say)
    settings = consumer_settings(
        args, config, ca_file, unit=args.unit, share_group=args.share, announce_status=True
    )
    stop = threading.Event()
    try:
        consumer = EventConsumer(
            settings,
            door.on_event,
            on_invalid=_rejected(door),
            on_connection=lambda what: print(what, file=sys.stderr, flush=True),
            verifier=verifier,
        ).start()
    except (OSError, ValueError) as error:
        door.close()
        print_cannot_connect(settings, error)
        return EXIT_FAILURE
    manager = notifier if notifier is not None else SystemdNotifier.from_environment()
    # The watchdog is fed only while the broker has confirmed the subscription: a door that cannot hear
    # its unit is not alive, however well its process runs.
    manager.watch("door subscription", consumer.subscribed.is_set)
    try:
        return listen(
            consumer,
            stop,
            args.timeout,
            label="door listening on",
            on_listening=lambda: _ready(manager, consumer),
            while_listening=manager,
        )
    finally:
        manager.stopping("door stopping")
        door.close()


def _ready(manager: Notifier, consumer: EventConsumer) -> None:
    manager.ready(f"listening on {consumer.topic_filter}")


def _say(line: str) -> None:
    # ascii(): text from an event (a subject id, a type) never reaches the terminal raw.
    print(ascii(line)[1:-1], flush=True)


def _rejected(door: Door) -> Callable[[str, str], None]:
    def rejected(topic: str, problem: str) -> None:
        door.on_rejected(topic, problem)
        print(f"rejected on {ascii(topic)[1:-1]}: {ascii(problem)[1:-1]}", file=sys.stderr, flush=True)

    return rejected
