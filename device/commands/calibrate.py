"""``device calibrate [--target-far X] [--plot out.png] [--strangers IMG...] [--json]``.

FAR/FRR by threshold from the enrolled templates and a stranger set, and a recommended threshold (see
``device.identity.calibrate`` for what is compared with what). The default stranger set is the pinned fixture
pictures that show nobody a test enrols (the face-api demo samples and scikit-image's astronaut); on a
real unit pass pictures of people who are not residents with ``--strangers``. Stranger faces must pass
the quality gate, as the unit matches only such faces. Nothing is written except the optional plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.config import UnitConfig
from device.evaluation.fixtures import FixtureError
from device.identity.calibrate import (
    CalibrationError,
    LookAlike,
    calibrate,
    collect_scores,
    draw_plot,
    format_table,
    look_alike_subjects,
    recommendation_lines,
)
from device.identity.enrol import Analyze, FaceLike
from device.identity.gallery_store import GalleryStore
from device.types import RgbImage
from device.vision.quality import assess

log = logging.getLogger(__name__)

DEFAULT_TARGET_FAR = 0.001


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "calibrate", run_calibration, "FAR/FRR by threshold from the enrolled set and strangers"
    )
    parser.add_argument(
        "--target-far",
        type=float,
        default=DEFAULT_TARGET_FAR,
        metavar="X",
        help=f"highest acceptable false accept rate (default {DEFAULT_TARGET_FAR})",
    )
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="draw FAR/FRR curves")
    parser.add_argument(
        "--strangers",
        nargs="+",
        type=Path,
        default=None,
        metavar="IMG",
        help="pictures of people who are NOT enrolled (default: the pinned fixture stranger pictures)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def default_strangers() -> Iterator[tuple[str, RgbImage]]:
    from device.evaluation import fixtures

    for name in sorted(fixtures.FACE_API_NPM.members):
        yield name, fixtures.load_rgb(name)
    try:
        yield "astronaut", fixtures.astronaut_rgb()
    except fixtures.FixtureError as error:
        # Said, not only logged: the default stranger set is then one picture short of what it claims.
        print(f"note: the default strangers are without scikit-image's astronaut: {error}", file=sys.stderr)


def stranger_pictures(paths: list[Path] | None, max_pixels: int) -> Iterator[tuple[str, RgbImage]]:
    if paths is None:
        yield from default_strangers()
        return
    from device.vision.faces import load_image_rgb

    for path in paths:
        yield str(path), load_image_rgb(path, max_pixels)


def stranger_embeddings(
    pictures: Iterator[tuple[str, RgbImage]],
    analyze: Analyze,
    config: UnitConfig,
) -> NDArray[np.float32]:
    rows: list[NDArray[np.float32]] = []
    for label, image in pictures:
        faces: list[FaceLike] = list(analyze(image))
        usable = [face for face in faces if assess(image, face.detection, config.quality).accepted]
        log.info("stranger picture %s: %d faces, %d usable", label, len(faces), len(usable))
        rows.extend(np.asarray(face.embedding, np.float32) for face in usable)
    if not rows:
        return np.zeros((0, 128), np.float32)
    return np.stack(rows)


def run_calibration(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    store = GalleryStore.from_config(config)
    templates, subject_ids = store.active_templates()
    by_subject = {
        subject: templates[[i for i, owner in enumerate(subject_ids) if owner == subject]]
        for subject in dict.fromkeys(subject_ids)
    }

    configured = config.matching.threshold
    look_alikes = look_alike_subjects(by_subject, configured)
    names = {subject: store.open_subject(subject).name for pair in look_alikes for subject in pair_ids(pair)}

    from device.vision.faces import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(config)
    try:
        strangers = stranger_embeddings(
            stranger_pictures(args.strangers, config.limits.max_image_pixels), analyzer.analyze, config
        )
        if args.strangers is not None and len(strangers) == 0:
            raise CalibrationError(
                f"none of the {len(args.strangers)} --strangers picture(s) shows a face that passes the "
                "quality gate, so there is no stranger to compare with; pass clear, frontal pictures of "
                "people who are not enrolled (or leave out --strangers for the default set)"
            )
        calibration = calibrate(collect_scores(by_subject, strangers), args.target_far)
        if args.plot is not None:
            draw_plot(calibration, configured, args.plot)
    except FixtureError as error:
        print(
            f"error: the default stranger pictures are not available ({error}); "
            "pass pictures of people who are not enrolled with --strangers IMG...",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except CalibrationError:
        # A duplicate enrolment can be the very reason no threshold meets the target: say it first.
        for pair in look_alikes:
            print(look_alike_warning(pair, names, configured), file=sys.stderr)
        raise

    if args.json:
        report = calibration.as_json(configured)
        report["look_alikes"] = [
            {
                "subjects": list(pair_ids(pair)),
                "names": [names[subject] for subject in pair_ids(pair)],
                "similarity": round(pair.similarity, 4),
            }
            for pair in look_alikes
        ]
        print(json.dumps(report, indent=2))
        return EXIT_OK
    scores = calibration.scores
    print(
        f"{scores.subjects} subject(s) ({scores.subjects_with_pairs} with several templates), "
        f"{scores.strangers} stranger face(s): {len(scores.genuine)} genuine and "
        f"{len(scores.impostor)} impostor comparisons"
    )
    for line in format_table(calibration, configured):
        print(line)
    for note in calibration.notes:
        print(f"note: {note}")
    for pair in look_alikes:
        print(look_alike_warning(pair, names, configured))
    if args.plot is not None:
        print(f"plot written to {args.plot}")
    for line in recommendation_lines(calibration, configured):
        print(line)
    return EXIT_OK


def pair_ids(pair: LookAlike) -> tuple[str, str]:
    return pair.first, pair.second


def look_alike_warning(pair: LookAlike, names: dict[str, str | None], configured: float) -> str:
    """Two subjects the unit cannot tell apart, by name: usually one person enrolled twice."""

    def who(subject: str) -> str:
        name = names.get(subject)
        return f"{name!r} ({subject})" if name else subject

    return (
        f"warning: enrolled subjects {who(pair.first)} and {who(pair.second)} match each other "
        f"(similarity {pair.similarity:.3f}, threshold {configured:.3f}): one person enrolled twice? "
        "Their comparisons count as impostors; `forget` the duplicate, then calibrate again"
    )
