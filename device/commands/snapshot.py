"""``device snapshot --annotate --out aim.png``: one local picture from the unit's camera to aim it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.models.accelerator import open_model
from device.ops.snapshot import take_snapshot
from device.vision.detect import FaceDetector

WARNING = (
    "warning: {path} shows the entrance and the faces in it. It is written here only (mode 0600), never "
    "published; delete it once the camera is aimed."
)


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "snapshot", snapshot_command, "one local picture from the camera, faces boxed and zone drawn (aiming)"
    )
    parser.add_argument("--out", type=Path, default=Path("snapshot.png"), help="picture file (.png or .jpg)")
    parser.add_argument("--annotate", action="store_true", help="box the faces and draw the entrance zone")


def snapshot_command(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    try:
        model = open_model(config.models, config.models.detector, state_dir=config.unit.state_dir)
        shot = take_snapshot(
            config, FaceDetector(model, config.detection), args.out, annotate_faces=args.annotate
        )
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    zone = "the configured zone" if config.detection.zone else "the whole frame (no zone configured)"
    print(f"{shot.width}x{shot.height} picture, {len(shot.faces)} face(s) in {zone}: {shot.path}")
    print(WARNING.format(path=shot.path), file=sys.stderr)
    return EXIT_OK
