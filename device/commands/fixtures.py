"""``device fixtures``: fetch and list the pinned face images used by tests and the demo."""

from __future__ import annotations

import argparse

from device.cli import EXIT_OK, CommandRegistry
from device.evaluation.fixtures import ARCHIVES, ensure_all


def register(commands: CommandRegistry) -> None:
    commands.add("fixtures", fetch_fixtures, "fetch the pinned fixture face images into the local cache")


def fetch_fixtures(_: argparse.Namespace) -> int:
    paths = ensure_all()
    for archive in ARCHIVES:
        print(f"{archive.package}=={archive.version} ({archive.licence})")
        for name in archive.members:
            print(f"  {paths[name]}")
    return EXIT_OK
