"""``device doctor`` (also ``device config check --deep``): can this unit run, and if not, what to fix.

One line per check, ✓ or ✗, and a ``fix:`` line under each ✗. Exit 0 when every check passed, 1 when one
failed, 2 when there is no usable config at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.ops.doctor import run_checks


def register(commands: CommandRegistry) -> None:
    commands.add(
        "doctor",
        doctor_command,
        "check files, certificate, broker, camera, models, accelerator and key before `run` needs them",
    )


def doctor_command(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    path: Path = args.config
    origin = getattr(args, "config_origin", "--config")
    checks = run_checks(config, config_label=f"{path} (from {origin}), unit {config.unit.id}")
    for check in checks:
        print(check.render())
    failed = [check for check in checks if not check.ok]
    print(
        f"{len(checks) - len(failed)} ok, {len(failed)} to fix" if failed else f"all {len(checks)} checks ok"
    )
    return EXIT_FAILURE if failed else EXIT_OK
