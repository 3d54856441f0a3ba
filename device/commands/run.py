"""``device run --config PATH``: the unit's service loop (systemd ``Type=notify``).

Exit codes: 0 after SIGTERM/SIGINT or the end of a file source; 1 when the capture thread failed;
2 when the unit cannot start with this config or these files (bad config, missing or tampered model,
missing file source). The systemd unit lists 2 in ``RestartPreventExitStatus``: a restart cannot fix
those, so the unit reports the problem instead of crash-looping. A missing or unreadable gallery is not
such a problem: the unit runs in no-gallery mode (every visit ``unknown``, reason ``no_gallery``) and
says so in its health.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from device.cli import CommandRegistry, config_from_args
from device.config import UnitConfig
from device.runtime.service import (
    UnitParts,
    build_runner,
    check_source,
    make_publisher,
    open_stages,
    stop_on_signals,
)
from device.timing import LatencyRecorder
from device.types import Decision


def register(commands: CommandRegistry) -> None:
    commands.add("run", run_command, "run the unit: camera -> faces -> decisions -> publisher, until stopped")


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    if getattr(args, "log_level", None) is None:
        logging.getLogger().setLevel(config.logging.level)
    stop_event = threading.Event()
    latencies = LatencyRecorder()
    decided: list[Decision] = []
    check_source(config)
    stages = open_stages(config, latencies)
    parts = UnitParts.for_unit(config, stages)
    publisher = make_publisher(config, parts)
    runner = build_runner(
        config,
        stages=stages,
        publisher=publisher,
        stop_event=stop_event,
        parts=parts,
        latencies=latencies,
        on_decision=decided.append,
    )
    signals: list[str] = []
    stop_on_signals(stop_event, signals)
    try:
        code = runner.run()
    finally:
        publisher.close()
    # Whichever way the run ends (its file source done, SIGTERM from systemd, Ctrl-C, capture failed),
    # the last line says what it did and what is still queued.
    print(run_summary(config, len(decided), ending(config, signals, code)), file=sys.stderr)
    return code


def ending(config: UnitConfig, signals: list[str], code: int) -> str:
    if signals:
        return f"stopped by {signals[0]}"
    if code != 0:
        return "stopped: capture failed"
    return "end of the file source" if config.capture.backend == "file" else "stopped"


def run_summary(config: UnitConfig, decisions: int, how: str = "end of the file source") -> str:
    """What a run did: how it ended, decisions made, and events the broker has not acknowledged yet."""
    line = f"{how}: {decisions} decision{'s' if decisions != 1 else ''}"
    if not config.mqtt.enabled:
        return line + " (printed above; mqtt is disabled)"
    from device.events.outbox import Outbox, OutboxError

    try:
        outbox = Outbox(config.mqtt.outbox_path)
        queued = outbox.stats().depth
        outbox.close()
    except OutboxError as error:
        return f"{line}; outbox unreadable: {error}"
    if queued == 0:
        return f"{line}; every event was delivered to the broker"
    return (
        f"{line}; {queued} event{'s' if queued != 1 else ''} still queued for the broker "
        "(sent on the next start; `device outbox show` lists them)"
    )
