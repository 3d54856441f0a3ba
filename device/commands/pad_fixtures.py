"""``device pad-fixtures``: render the project's own presentation-attack set into the fixture cache.

Two splits from different subjects and parameter seeds: ``tune`` (looked at while building the cues)
and ``holdout`` (the acceptance figures). Reproducible: the same files every time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args


def register(commands: CommandRegistry) -> None:
    parser = commands.add("pad-fixtures", pad_fixtures, "render the generated presentation-attack set")
    parser.add_argument("--out", type=Path, default=None, help="default: <fixture cache>/pad")


def pad_fixtures(args: argparse.Namespace) -> int:
    from device.evaluation import fixtures
    from device.lab.padattacks import HOLDOUT_PHOTOS, TUNE_PHOTOS, write_attack_set
    from device.vision.faces import load_stages

    config = config_from_args(args)
    out: Path = args.out or fixtures.cache_root() / "pad"
    try:
        # the set is a fixture: the same files on every machine, so the faces that place the attack
        # instruments come from the float detector on the CPU whatever this unit's accelerator picks
        cpu_float = config.models.model_copy(update={"accelerator": "cpu", "cpu_variant": "float"})
        detector = load_stages(config.model_copy(update={"models": cpu_float})).detector
        for split, names in (("tune", TUNE_PHOTOS), ("holdout", HOLDOUT_PHOTOS)):
            target = out / split
            if target.exists():
                shutil.rmtree(target)
            photos = [(name, fixtures.load_rgb(name)) for name in names]
            count = write_attack_set(target, split, photos, detector.detect)
            print(f"{target}: {count} presentations")
    except (fixtures.FixtureError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
