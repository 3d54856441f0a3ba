"""``device identify IMG... [--json]``: the subject id (or ``unknown``) and similarity of every face.

Reads the gallery, never writes it (no last-seen update, no audit entry: it is a check, not a visit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.identity.gallery_store import GalleryStore
from device.identity.identify import identify_faces
from device.identity.match import TemplateIndex


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "identify", identify, "who is in these pictures: subject id or unknown, and similarity, per face"
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMG")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def identify(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    store = GalleryStore.from_config(config)
    contents = store.load()
    templates, subject_ids = store.active_templates()
    index = TemplateIndex(templates, subject_ids)

    from device.runtime.service import open_liveness_stage
    from device.vision.faces import FaceAnalyzer, ImageError, load_image_rgb

    analyzer = FaceAnalyzer.from_config(config)
    pad = open_liveness_stage(config)
    reports: list[dict[str, Any]] = []
    failed = False
    for path in args.images:
        try:
            image = load_image_rgb(path, config.limits.max_image_pixels)
        except ImageError as error:
            failed = True
            reports.append({"image": str(path), "error": error.reason, "faces": []})
            continue
        faces = identify_faces(
            image,
            analyzer.analyze(image),
            index,
            config.matching,
            config.quality,
            liveness_of=None if pad is None else pad.still,
            liveness=config.liveness,
        )
        reports.append({"image": str(path), "error": None, "faces": [face.as_json() for face in faces]})

    if args.json:
        document = {
            "gallery_version": contents.version,
            "threshold": config.matching.threshold,
            "images": reports,
        }
        print(json.dumps(document, indent=2))
    else:
        print_text(reports, len(index.subjects))
    return EXIT_FAILURE if failed else EXIT_OK


def print_text(reports: list[dict[str, Any]], subjects: int) -> None:
    if subjects == 0:
        print("note: no active subject is enrolled; every face is unknown", file=sys.stderr)
    for report in reports:
        if report["error"]:
            print(f"{report['image']}: error: {report['error']}")
            continue
        if not report["faces"]:
            print(f"{report['image']}: no face found")
            continue
        for number, face in enumerate(report["faces"], start=1):
            similarity = "-" if face["similarity"] is None else f"{face['similarity']:.3f}"
            notes = f" (quality: {', '.join(face['quality_issues'])})" if face["quality_issues"] else ""
            live = face.get("liveness")
            if isinstance(live, dict) and live.get("passed") is False:
                notes += f" (presentation attack: {', '.join(face['reasons'])})"
            print(f"{report['image']} face {number}: {face['subject_id']} similarity {similarity}{notes}")
