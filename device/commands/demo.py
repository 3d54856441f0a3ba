"""``device demo`` (``make run``): a fresh unit, an enrolled demo resident, a generated clip, decisions.

By default the unit publishes to a local TLS Mosquitto (the fleet's broker config, certificates made for
the demo) and the demo prints what a ``device events tail`` subscriber receives; ``--no-broker`` prints
the decisions the unit would publish instead.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from device import cli
from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry
from device.events.publish import Publisher, StdoutPublisher
from device.lab.demo import DemoError, add_demo_arguments, describe, outcome_problems, prepare
from device.runtime.service import (
    UnitParts,
    build_runner,
    make_publisher,
    open_stages,
    stop_on_signals,
)
from device.timing import LatencyRecorder
from device.types import Decision

SUBSCRIBER_READY_S = 30.0
DELIVERY_WAIT_S = 15.0


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "demo",
        demo_command,
        "demo: init a unit, enrol a demo resident, run the pipeline on a generated clip, print decisions",
    )
    add_demo_arguments(parser)
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="no local Mosquitto: print what the unit would publish instead of what a subscriber receives",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")


def demo_command(args: argparse.Namespace) -> int:
    if getattr(args, "log_level", None) is None:
        logging.getLogger().setLevel(logging.WARNING)  # the demo's own lines tell the story
    directory: Path = args.dir or Path(tempfile.mkdtemp(prefix="entrance-demo-"))
    if args.dir is not None and any(directory.glob("*")):
        print(f"error: {directory} is not empty; the demo needs a fresh folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_demo(directory, fast=args.fast, broker=not args.no_broker)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
            # The folder was named at the start; say that it is gone, and how to keep one.
            print(f"demo folder {directory} removed (--keep or --dir DIR keeps it)")


class Subscriber:
    """``device events tail`` in its own process, its lines echoed as they arrive."""

    def __init__(self, tail_args: list[str]) -> None:
        self.lines: list[str] = []
        self._process = subprocess.Popen(
            [sys.executable, "-m", "device", "events", "tail", *tail_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._errors: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._lock:
                self.lines.append(line.rstrip())
            print(f"          subscriber received: {line.rstrip()}", flush=True)

    def _read_err(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            if "listening on" in line:
                print(f"subscriber (device events tail) {line.strip()}", flush=True)
                self._ready.set()
            elif line.strip():
                self._errors.append(line.rstrip())

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s):
            self.stop()
            raise DemoError("device events tail did not subscribe: " + " | ".join(self._errors[-3:]))

    def wait_for(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.lines) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return len(self.lines)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def run_demo(directory: Path, *, fast: bool, broker: bool) -> int:
    latencies = LatencyRecorder()
    print(f"demo folder {directory}")
    dev_broker: Any = None
    overrides: dict[str, dict[str, Any]] = {}
    if broker:
        from device.lab.devbroker import DevBrokerError, start_dev_broker

        try:
            dev_broker = start_dev_broker(directory / "broker", unit_id="demo-unit")
        except DevBrokerError as error:
            hint = "or run `device demo --no-broker`"
            raise DemoError(f"cannot start the local broker ({error}); {hint}") from None
        overrides["mqtt"] = dev_broker.mqtt_section()
        print(f"local Mosquitto with TLS and client certificates on 127.0.0.1:{dev_broker.port}")
    subscriber: Subscriber | None = None
    try:
        unit, stages, clip, resident = prepare(
            directory, lambda config: open_stages(config, latencies), cli.main, overrides
        )
        config = unit.config
        if fast:
            capture = config.capture.model_copy(update={"realtime": False})
            config = config.model_copy(update={"capture": capture})
        models = stages.health()
        print(
            f"unit {config.unit.id}: detector on {models['detector'].get('state')}, "
            f"embedder on {models['embedder'].get('state')}"
        )
        print(f"enrolled the demo resident as {resident} (consent record DEMO-CONSENT-0001, audited)")
        print(
            f"clip {clip.path.name}: {clip.frames} frames at {clip.fps:g} fps, "
            f"{clip.size[0]}x{clip.size[1]}; "
            + ", ".join(f"{span.label} walks in at frame {span.first_frame}" for span in clip.visits)
        )
        if dev_broker is not None:
            subscriber = Subscriber(dev_broker.tail_args())
            subscriber.wait_ready(SUBSCRIBER_READY_S)
        parts = UnitParts.for_unit(config, stages)
        publisher = make_publisher(config, parts) if dev_broker is not None else StdoutPublisher()
        decisions = run_clip(config, stages, latencies, publisher, parts, resident)
        delivered = None
        if subscriber is not None:
            delivered = subscriber.wait_for(len(decisions), DELIVERY_WAIT_S)
    finally:
        if subscriber is not None:
            subscriber.stop()
        if dev_broker is not None:
            dev_broker.stop()
    problems = outcome_problems(decisions, resident)
    if delivered is not None and delivered != len(decisions):
        problems.append(f"the subscriber received {delivered} events for {len(decisions)} decisions")
    for problem in problems:
        print(f"demo check failed: {problem}", file=sys.stderr)
    if problems:
        return EXIT_FAILURE
    print("demo ok: the resident was recognised, the visitor was not (and nothing of the visitor was kept)")
    return EXIT_OK


def run_clip(
    config: Any,
    stages: Any,
    latencies: LatencyRecorder,
    publisher: Publisher,
    parts: UnitParts,
    resident: str,
) -> list[Decision]:
    decisions: list[Decision] = []
    started = time.monotonic()

    def show(decision: Decision) -> None:
        decisions.append(decision)
        elapsed = time.monotonic() - started
        print(f"[{elapsed:5.1f} s] unit decided {describe(decision, resident)}", flush=True)

    stop_event = threading.Event()
    runner = build_runner(
        config,
        stages=stages,
        publisher=publisher,
        stop_event=stop_event,
        parts=parts,
        latencies=latencies,
        on_decision=show,
    )
    stop_on_signals(stop_event)
    try:
        code = runner.run()
    finally:
        publisher.close()  # MQTT: waits until the outbox is delivered (or gives up), then disconnects
    health = runner.health()
    print(
        f"clip done: {health['frames_processed']} frames, detector ran on {health['detector_runs']} "
        f"(motion gate skipped {health['motion_skipped']}), {len(decisions)} decisions"
    )
    if code != 0:
        raise DemoError("the pipeline stopped with an error (see the log above)")
    return decisions
