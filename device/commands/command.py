"""``device command key|send``: signed commands for door controllers, keypads and operators.

``device command key --signing-key FILE --name NAME [--register FILE]`` makes a commander's Ed25519 key
(0600; it stays with the commander) and prints its public key; ``--register`` adds it to a trusted
commanders file, which the unit reads through ``mqtt.command_keys``. ``device command send`` signs one
command (claim SUBJECT, reload, health) with that key and publishes it with the commander's own broker
certificate, then waits (``--timeout``, 10 s) for the unit's signed answer, checked against the unit key
registry (``--keys``), and prints one line: ``applied``, ``refused: <reason>`` or ``no answer within N s``;
it exits 0 only for ``applied``. A unit acts only on commands signed by a commander in its file, each
once, before expiry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._broker_cli import add_broker_options, consumer_settings, required_ca_file
from device.consumers.commander import DEFAULT_ANSWER_TIMEOUT_S, send_command
from device.events.payloads import COMMANDS, MAX_COMMAND_LIFETIME_S, PayloadError
from device.events.signing import (
    COMMANDERS,
    UNITS,
    EventKey,
    check_answer,
    load_registry,
    register_key,
    signed_command,
)

COMMANDER_KEY = "commander signing key"


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("command", "signed commands to a unit (door controller, keypad, operator)")
    key = group.add("key", commander_key, "make or show a commander's signing key; optionally trust it")
    key.add_argument(
        "--signing-key", type=Path, required=True, help="the commander's private key file (0600)"
    )
    key.add_argument("--name", required=True, help="the commander's name, as units will know it")
    key.add_argument(
        "--register", type=Path, default=None, metavar="FILE", help="add it to this trusted commanders file"
    )
    send = group.add("send", send_signed, "sign one command, publish it to a unit and wait for its answer")
    send.add_argument("command", choices=COMMANDS)
    send.add_argument("subject_id", nargs="?", default=None, help="claim: the subject to verify against")
    send.add_argument("--unit", required=True, help="the unit's id")
    send.add_argument("--signing-key", type=Path, required=True, help="the commander's private key file")
    send.add_argument("--name", required=True, help="the commander's name (as registered)")
    send.add_argument("--ttl", type=float, default=30.0, help="seconds the command stays valid (<= 600)")
    send.add_argument(
        "--keys",
        type=Path,
        required=True,
        help="unit key registry: the unit's answer must carry its signature",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_ANSWER_TIMEOUT_S,
        help=f"seconds to wait for the answer (default {DEFAULT_ANSWER_TIMEOUT_S:g})",
    )
    add_broker_options(
        send, cert_help="the commander's broker certificate", key_help="the commander's broker private key"
    )


def commander_key(args: argparse.Namespace) -> int:
    try:
        key = EventKey.load_or_create(args.signing_key, COMMANDER_KEY)
        if args.register is not None:
            register_key(args.register, args.name, key.public_text, COMMANDERS)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({"commander": args.name, "public_key": key.public_text}))
    return EXIT_OK


def send_signed(args: argparse.Namespace) -> int:
    if (args.command == "claim") != (args.subject_id is not None):
        print("error: claim takes a SUBJECT_ID; reload and health take none", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.ttl <= MAX_COMMAND_LIFETIME_S:
        print(f"error: --ttl must be within (0, {MAX_COMMAND_LIFETIME_S:.0f}] s", file=sys.stderr)
        return EXIT_USAGE
    config = config_from_args(args)
    ca_file = required_ca_file(args, config)
    if ca_file is None:
        return EXIT_USAGE
    settings = consumer_settings(args, config, ca_file)
    if args.timeout <= 0:
        print("error: --timeout must be above 0 s", file=sys.stderr)
        return EXIT_USAGE
    try:
        if not args.signing_key.exists():
            raise PayloadError(f"no {COMMANDER_KEY} at {args.signing_key}: make it with `device command key`")
        unit_keys = load_registry(args.keys, UNITS)
        if args.unit not in unit_keys:
            raise PayloadError(f"unit {args.unit!r} is not in {args.keys}: its answer could not be checked")
        key = EventKey.load_or_create(args.signing_key, COMMANDER_KEY)
        payload = signed_command(
            key, args.name, args.command, unit=args.unit, subject_id=args.subject_id, ttl_s=args.ttl
        )
        request_id = json.loads(payload)["request_id"]
        sent = send_command(
            settings,
            args.unit,
            args.command,
            payload,
            check=lambda data: check_answer(unit_keys, data, unit=args.unit, request_id=request_id),
            answer_timeout_s=args.timeout,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for why in sent.set_aside:
        print(f"warning: set aside an answer that does not count: {why}", file=sys.stderr)
    print(sent.line(args.timeout))
    return EXIT_OK if sent.applied else EXIT_FAILURE
