"""``device bench --out bench.json``: speed and memory of the unit's pipeline on this machine (JSON)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from device.cli import EXIT_OK, CommandRegistry, config_from_args
from device.commands.init import shipped_models_dir
from device.lab.bench import run_benchmark, time_to_door, write_results
from device.runtime.service import open_stages
from device.timing import LatencyRecorder


def register(commands: CommandRegistry) -> None:
    parser = commands.add("bench", bench_command, "benchmark the pipeline on the demo clip; JSON result")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the JSON here")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing (the best one counts)")
    parser.add_argument("--idle-seconds", type=float, default=6.0, help="length of the still-scene run")
    parser.add_argument(
        "--door-runs", type=int, default=3, help="passes of the demo clip for the time to door (0: skip it)"
    )
    parser.add_argument(
        "--only-time-to-door", action="store_true", help="measure only the time to decision and to door"
    )


def bench_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if getattr(args, "config", None) is None:
        # Without a unit config: the project's own models, on the CPU (no Edge TPU on a build machine).
        models_dir = shipped_models_dir()
        if models_dir is not None:
            models = config.models.model_copy(update={"dir": models_dir})
            config = config.model_copy(update={"models": models})
    latencies = LatencyRecorder()
    work_dir = Path(tempfile.mkdtemp(prefix="entrance-bench-"))
    try:
        stages = open_stages(config, latencies)
        if args.only_time_to_door:
            results = time_to_door(config, stages, work_dir, max(1, args.door_runs))
        else:
            results = run_benchmark(
                config,
                stages,
                latencies,
                work_dir,
                repeats=max(1, args.repeats),
                idle_seconds=args.idle_seconds,
                door_runs=max(0, args.door_runs),
            )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(write_results(results, args.out))
    return EXIT_OK
