"""``device detect IMG [--out annotated.png] [--json]``: faces in a local picture (never published)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.models.accelerator import AcceleratorError, open_model
from device.models.manifest import ModelFileError
from device.vision.detect import FaceDetector, annotate


def register(commands: CommandRegistry) -> None:
    parser = commands.add("detect", detect_faces, "detect faces in a picture; optionally draw them")
    parser.add_argument("image", type=Path, help="picture file (JPEG, PNG, ...)")
    parser.add_argument("--out", type=Path, help="write the picture with boxes and keypoints here")
    parser.add_argument("--json", action="store_true", help="one JSON object per face")


def detect_faces(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"error: cannot read {args.image} as a picture", file=sys.stderr)
        return EXIT_FAILURE
    image = np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.uint8)
    try:
        model = open_model(config.models, config.models.detector, state_dir=config.unit.state_dir)
    except (ModelFileError, AcceleratorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
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
        if not cv2.imwrite(str(args.out), np.ascontiguousarray(drawn[:, :, ::-1])):
            print(f"error: cannot write {args.out}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK
