"""``device command key|send``: signed commands for door controllers, keypads and operators.

``device command key --signing-key FILE --name NAME [--register FILE]`` makes a commander's Ed25519 key
(0600; it stays with the commander) and prints its public key; ``--register`` adds it to a trusted
commanders file, which the unit reads through ``mqtt.command_keys``. ``device command send`` signs one
command (claim SUBJECT, reload, health) with that key and publishes it with the commander's own broker
certificate. A unit acts only on commands signed by a commander in its file, each once, before expiry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._broker_cli import add_broker_options, consumer_settings, required_ca_file
from device.consumers.commander import send_command
from device.events.payloads import COMMANDS, MAX_COMMAND_LIFETIME_S, PayloadError
from device.events.signing import COMMANDERS, EventKey, register_key, signed_command

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
    send = group.add("send", send_signed, "sign one command and publish it to a unit")
    send.add_argument("command", choices=COMMANDS)
    send.add_argument("subject_id", nargs="?", default=None, help="claim: the subject to verify against")
    send.add_argument("--unit", required=True, help="the unit's id")
    send.add_argument("--signing-key", type=Path, required=True, help="the commander's private key file")
    send.add_argument("--name", required=True, help="the commander's name (as registered)")
    send.add_argument("--ttl", type=float, default=30.0, help="seconds the command stays valid (<= 600)")
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
    try:
        if not args.signing_key.exists():
            raise PayloadError(f"no {COMMANDER_KEY} at {args.signing_key}: make it with `device command key`")
        key = EventKey.load_or_create(args.signing_key, COMMANDER_KEY)
        payload = signed_command(key, args.name, args.command, subject_id=args.subject_id, ttl_s=args.ttl)
        sent = send_command(settings, args.unit, args.command, payload)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    request_id = json.loads(payload)["request_id"]
    print(
        f"{args.command} sent to {sent.topic} (request {request_id}); "
        f"the unit acts on it only if it trusts {args.name}"
    )
    return EXIT_OK
