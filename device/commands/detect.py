"""``device detect IMG [--out annotated.png] [--json]``: faces in a local picture (never published)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from device.atomicio import PRIVATE_FILE_MODE, write_atomically
from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.models.accelerator import open_model
from device.vision.detect import FaceDetector, annotate
from device.vision.faces import load_image_rgb


def register(commands: CommandRegistry) -> None:
    parser = commands.add("detect", detect_faces, "detect faces in a picture; optionally draw them")
    parser.add_argument("image", type=Path, help="picture file (JPEG, PNG, ...)")
    parser.add_argument("--out", type=Path, help="write the picture with boxes and keypoints here")
    parser.add_argument("--json", action="store_true", help="one JSON object per face")


def detect_faces(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    image = load_image_rgb(args.image, config.limits.max_image_pixels)
    model = open_model(config.models, config.models.detector, state_dir=config.unit.state_dir)
    faces = FaceDetector(model, config.detection).detect(image)
    for face in faces:
        record = {
            "box": [round(v, 1) for v in (face.box.x0, face.box.y0, face.box.x1, face.box.y1)],
            "score": round(face.score, 4),
            "keypoints": np.round(face.keypoints, 1).tolist(),
        }
        if args.json:
            print(json.dumps(record))
        else:
            print(f"face score {record['score']:.3f} box {record['box']}")
    if not args.json:
        print(f"{len(faces)} face(s) in {args.image} ({model.state}, {model.variant})")
    if args.out is not None:
        drawn = annotate(image, faces)
        ok, encoded = cv2.imencode(args.out.suffix or ".png", np.ascontiguousarray(drawn[:, :, ::-1]))
        if not ok:
            print(f"error: cannot encode {args.out} (use .png or .jpg)", file=sys.stderr)
            return EXIT_FAILURE
        try:
            # 0600 from creation: the picture holds a face, readable by the operator only.
            write_atomically(args.out, encoded.tobytes(), mode=PRIVATE_FILE_MODE)
        except OSError as error:
            print(f"error: cannot write {args.out}: {error.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        print(
            f"wrote {args.out} (mode 0600): it holds a face; delete it when the check is done",
            file=sys.stderr,
        )
    return EXIT_OK
