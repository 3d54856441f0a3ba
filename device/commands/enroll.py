"""``device enroll``: add a consenting person to the unit's gallery from pictures or camera frames.

    device --config unit.toml enroll --name NAME --images IMG... --consent-ref REF
        [--expires DATE] [--operator WHO] [--force]
    device --config unit.toml enroll --name NAME --from-camera N --consent-ref REF ...

Every picture goes through the enrolment gate (``device.identity.enrol``) and gets one line on stdout:
accepted, or rejected with the reason. Without a consent reference nothing is even read. The pictures
themselves are never stored; only the chosen embeddings are, encrypted, under the new subject's own key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.commands._gallery_cli import add_operator_option, operator_of
from device.config import UnitConfig
from device.errors import require_plain, shown
from device.identity.audit import Scalar
from device.identity.enrol import (
    AlreadyEnrolledError,
    Analyze,
    EnrolmentError,
    Verdict,
    judge_picture,
    plan_enrolment,
    unreadable,
)
from device.identity.gallery_records import utc_now
from device.identity.gallery_store import EnrolRequest, GalleryStore, check_expiry
from device.progress import ProgressBar
from device.vision.capture import open_source
from device.vision.capture.source import CameraError, EndOfStream, FrameSource

log = logging.getLogger(__name__)

FRAMES_PER_WANTED = 60  # --from-camera gives up after this many frames per good frame asked for
DEFAULT_FRAME_GAP_S = 0.4  # kept camera frames are at least this far apart (different pose/expression)


def expiry_date(text: str) -> date:
    """argparse type: a calendar date, with a message a person understands when it is not one."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: write it as YYYY-MM-DD, e.g. 2027-06-30"
        ) from None


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "enroll", enroll, "enrol a consenting person from pictures or camera frames (templates only)"
    )
    parser.add_argument("--name", required=True, help="display name (stored encrypted)")
    sources = parser.add_mutually_exclusive_group(required=True)
    sources.add_argument("--images", nargs="+", type=Path, metavar="IMG", help="pictures of the person")
    sources.add_argument(
        "--from-camera",
        type=int,
        metavar="N",
        help="capture N good frames from the configured camera instead of pictures",
    )
    parser.add_argument(
        "--consent-ref",
        default=None,
        metavar="REF",
        help="reference of the signed consent form (required; recorded with the enrolment)",
    )
    parser.add_argument("--expires", type=expiry_date, default=None, metavar="DATE", help="YYYY-MM-DD")
    parser.add_argument(
        "--force", action="store_true", help="enrol even if the person matches another subject"
    )
    parser.add_argument(
        "--frame-gap",
        type=int,
        default=None,
        metavar="K",
        help=f"--from-camera: keep at most every K-th frame (default: {DEFAULT_FRAME_GAP_S:g} s of frames)",
    )
    add_operator_option(parser)


def enroll(args: argparse.Namespace) -> int:
    consent: str = require_plain((args.consent_ref or "").strip(), "--consent-ref")
    require_plain(args.name, "--name")
    operator_of(args)
    if not consent:
        print(
            "error: enrolment needs --consent-ref REF, the reference of the person's signed consent form; "
            "nothing was read or stored",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.from_camera is not None and args.from_camera < 1:
        print("error: --from-camera needs a number of frames of at least 1", file=sys.stderr)
        return EXIT_FAILURE
    config = config_from_args(args, required=True)
    if args.expires is not None:
        check_expiry(args.expires, utc_now().date())  # before any picture is read
    store = GalleryStore.from_config(config)
    store.load()  # a wrong key or a damaged gallery stops us before any model is loaded

    from device.vision.faces import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(config)
    if args.images is not None:
        verdicts = judge_pictures(args.images, analyzer.analyze, config)
    else:
        gap = args.frame_gap or max(1, round(config.capture.fps * DEFAULT_FRAME_GAP_S))
        camera = open_source(config.capture)
        verdicts = judge_camera_frames(
            camera, analyzer.analyze, config, wanted=args.from_camera, frame_gap=gap
        )
    for verdict in verdicts:
        mark = "ok  " if verdict.accepted else "skip"
        print(f"{mark} {shown(verdict.source)}: {shown(verdict.message)}")
    try:
        plan = plan_enrolment(
            verdicts,
            store.active_templates(),
            matching=config.matching,
            max_templates=store.max_templates,
            force=args.force,
        )
    except EnrolmentError as error:
        record_refusal(store, args, consent, error, verdicts)
        raise
    if plan.existing is not None:
        log.warning(
            "enrolling despite a match with %s (similarity %.3f): --force",
            plan.existing.subject_id,
            plan.existing.similarity,
        )
    info = store.enrol(
        EnrolRequest(
            name=args.name,
            templates=plan.templates,
            consent_reference=consent,
            operator=operator_of(args),
            purpose_version=config.gallery.consent_purpose_version,
            expires=args.expires,
            forced=plan.existing is not None,
            images_used=plan.used,
            images_rejected=plan.rejected,
        )
    )
    print(
        f"enrolled {info.subject_id}: {info.template_count} template(s) from {plan.used} usable of "
        f"{len(plan.verdicts)} picture(s), consent {shown(info.consent.reference)}, expires {info.expires}"
    )
    print(info.subject_id)
    return EXIT_OK


def record_refusal(
    store: GalleryStore,
    args: argparse.Namespace,
    consent: str,
    error: EnrolmentError,
    verdicts: Sequence[Verdict],
) -> None:
    """A refused enrolment is audited too (who tried, with which consent, why); never the pictures."""
    used = sum(1 for verdict in verdicts if verdict.accepted)
    details: dict[str, Scalar] = {
        "reason": error.code,
        "consent_ref": consent,
        "images_used": used,
        "images_rejected": len(verdicts) - used,
    }
    if isinstance(error, AlreadyEnrolledError):
        details["subject_id"] = error.match.subject_id
    store.audit.append("enrol_refused", operator_of(args), details)


def judge_pictures(paths: Sequence[Path], analyze: Analyze, config: UnitConfig) -> list[Verdict]:
    from device.vision.faces import ImageError, load_image_rgb

    progress = ProgressBar(len(paths), enabled=len(paths) > 1)
    verdicts = []
    for path in paths:
        try:
            image = load_image_rgb(path, config.limits.max_image_pixels)
        except ImageError as error:
            verdicts.append(unreadable(str(path), error.reason))
        else:
            verdicts.append(judge_picture(str(path), image, analyze(image), config.quality))
        progress.step(path.name)
    progress.finish()
    return verdicts


def judge_camera_frames(
    source: FrameSource, analyze: Analyze, config: UnitConfig, *, wanted: int, frame_gap: int
) -> list[Verdict]:
    """Reads frames until ``wanted`` pass the gate (at least ``frame_gap`` frames apart).

    Only accepted frames are returned (each with its embedding); the tally of rejection reasons goes in
    the error when too few frames were good. Frames are dropped as soon as they are judged.
    """
    progress = ProgressBar(wanted)
    accepted: list[Verdict] = []
    rejected: dict[str, int] = {}
    last_kept = -frame_gap
    limit = wanted * FRAMES_PER_WANTED
    frames_read = 0
    ran_out = False
    try:
        source.open()
        for index in range(limit):
            if len(accepted) >= wanted:
                break
            try:
                image = source.read()
            except EndOfStream:
                ran_out = True
                break
            frames_read += 1
            if index - last_kept < frame_gap:
                continue
            verdict = judge_picture(f"camera frame {index}", image, analyze(image), config.quality)
            if verdict.accepted:
                accepted.append(verdict)
                last_kept = index
                progress.step(verdict.source)
            else:
                for reason in verdict.reasons:
                    rejected[reason.value] = rejected.get(reason.value, 0) + 1
    except CameraError as error:
        raise EnrolmentError(f"camera: {error}", code="camera_failed") from None
    finally:
        source.close()
        progress.finish()
    if len(accepted) < wanted:
        tally = ", ".join(f"{reason} x{count}" for reason, count in sorted(rejected.items())) or "none"
        raise EnrolmentError(
            f"only {len(accepted)} of {wanted} good frames from the camera (rejected: {tally}); "
            + (ran_out_advice(config, frames_read, frame_gap) if ran_out else CAMERA_ADVICE),
            code="no_usable_picture",
        )
    return accepted


CAMERA_ADVICE = "have the person face the camera, closer and in good light"


def ran_out_advice(config: UnitConfig, frames_read: int, frame_gap: int) -> str:
    """A video file or picture folder that ends is not a person to turn towards the camera."""
    source = getattr(config.capture, "source", None)
    what = f"the {config.capture.backend} source" + (f" {source}" if source else "")
    return (
        f"{what} ran out after {frames_read} frame(s), judged every {frame_gap}; "
        "give it more frames with a face (or a smaller --frame-gap), or use --images"
    )
