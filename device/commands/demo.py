"""``device demo`` (``make run``): a fresh unit, an enrolled demo resident, a generated clip, decisions."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from device import cli
from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry
from device.demo import DemoError, add_demo_arguments, describe, outcome_problems, prepare
from device.fixtures import FixtureError
from device.gallery import GalleryError
from device.publish import StdoutPublisher
from device.service import StartupError, build_runner, open_stages, stop_on_signals
from device.timing import LatencyRecorder
from device.types import Decision


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "demo",
        demo_command,
        "demo: init a unit, enrol a demo resident, run the pipeline on a generated clip, print decisions",
    )
    add_demo_arguments(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")


def demo_command(args: argparse.Namespace) -> int:
    directory: Path = args.dir or Path(tempfile.mkdtemp(prefix="entrance-demo-"))
    if args.dir is not None and any(directory.glob("*")):
        print(f"error: {directory} is not empty; the demo needs a fresh folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_demo(directory, fast=args.fast)
    except (DemoError, StartupError, GalleryError, FixtureError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def run_demo(directory: Path, *, fast: bool) -> int:
    latencies = LatencyRecorder()
    print(f"demo folder {directory}")
    unit, stages, clip, resident = prepare(directory, lambda config: open_stages(config, latencies), cli.main)
    config = unit.config
    if fast:
        config = config.model_copy(update={"capture": config.capture.model_copy(update={"realtime": False})})
    models = stages.health()
    print(
        f"unit {config.unit.id}: detector on {models['detector'].get('state')}, "
        f"embedder on {models['embedder'].get('state')}"
    )
    print(f"enrolled the demo resident as {resident} (consent record DEMO-CONSENT-0001, audited)")
    print(
        f"clip {clip.path.name}: {clip.frames} frames at {clip.fps:g} fps, {clip.size[0]}x{clip.size[1]}; "
        + ", ".join(f"{span.label} walks in at frame {span.first_frame}" for span in clip.visits)
    )
    decisions: list[Decision] = []
    started = time.monotonic()

    def show(decision: Decision) -> None:
        decisions.append(decision)
        print(f"[{time.monotonic() - started:5.1f} s] {describe(decision, resident)}", flush=True)

    stop_event = threading.Event()
    stop_on_signals(stop_event)
    publisher = StdoutPublisher()
    runner = build_runner(
        config,
        stages=stages,
        publisher=publisher,
        stop_event=stop_event,
        latencies=latencies,
        on_decision=show,
    )
    code = runner.run()
    publisher.close()
    health = runner.health()
    print(
        f"clip done: {health['frames_processed']} frames, detector ran on {health['detector_runs']} "
        f"(motion gate skipped {health['motion_skipped']}), {len(decisions)} decisions"
    )
    problems = outcome_problems(decisions, resident)
    for problem in problems:
        print(f"demo check failed: {problem}", file=sys.stderr)
    if code != 0 or problems:
        return EXIT_FAILURE
    print("demo ok: the resident was recognised, the visitor was not (and nothing of the visitor was kept)")
    return EXIT_OK
