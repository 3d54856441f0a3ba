"""``device config check|schema``: validate a config file, print the config JSON schema."""

from __future__ import annotations

import argparse
import json

from device.cli import EXIT_OK, CommandRegistry, config_from_args
from device.config import config_json_schema


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("config", "check a unit config or print its JSON schema")
    check = group.add(
        "check", check_config, "validate the config given with --config (exit 2 listing every problem)"
    )
    check.add_argument(
        "--deep", action="store_true", help="also check files, certificate, broker, camera (= device doctor)"
    )
    group.add("schema", print_schema, "print the JSON schema of the unit config")


def check_config(args: argparse.Namespace) -> int:
    if getattr(args, "deep", False):
        from device.commands.doctor import doctor_command

        return doctor_command(args)
    config = config_from_args(args, required=True)
    print(f"config ok: unit {config.unit.id}, capture {config.capture.backend}")
    return EXIT_OK


def print_schema(_: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK
