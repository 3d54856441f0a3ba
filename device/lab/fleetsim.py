"""Simulated units for the many-buildings walkthrough and ``make fleet-bench``: the unit's own
``MqttPublisher`` (signing key, SQLite outbox, TLS, QoS 1) fed with decisions at a fixed rate; no camera
and no model, because what is under test is the way from the outbox to the archive.

    python -m device.lab.fleetsim --unit state/fleet/north/lobby-1.mqtt.toml ... \\
        --state state/fleet/units --keys state/fleet/unit-keys.json --rate 2 --duration 5 \\
        [--forget s-anna]

Each ``--unit`` is the ``[mqtt]`` block the broker kit wrote for that unit (``deploy.broker.local
--unit``); the unit id is the block's file name. Every unit's public event key goes into ``--keys`` (the
registry archivers verify against). ``--forget SUBJECT`` ends with each unit queueing a signed
``subject_forgotten`` for it, as ``device forget`` does. Prints one JSON line: events committed and
whether every outbox drained.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.config import UnitConfig, parse_config
from device.events.forgotten import announce_forgotten
from device.events.mqtt_publisher import MqttPublisher
from device.events.signing import register_key, unit_event_key
from device.layout import StateLayout
from device.types import Decision, DecisionType

SUBJECTS = ("s-anna", "s-bert", "s-cleo")
DRAIN_TIMEOUT_S = 120.0


def sim_config(unit: str, mqtt: dict[str, Any], state_root: Path, **overrides: Any) -> UnitConfig:
    """A unit config around an ``[mqtt]`` section: its own state folder and outbox."""
    state = state_root / unit
    section = {
        **mqtt,
        "enabled": True,
        "outbox_path": str(state / "outbox.db"),
        "health_interval_s": 60.0,
        "reconnect_backoff_max_s": 2.0,
        **overrides,
    }
    return parse_config({"unit": {"id": unit, "state_dir": str(state)}, "mqtt": section})


def config_from_block(block: Path, state_root: Path) -> UnitConfig:
    """The config of the unit whose ``[mqtt]`` block is ``block`` (``<unit>.mqtt.toml``)."""
    unit = block.name.removesuffix(".mqtt.toml")
    return sim_config(unit, tomllib.loads(block.read_text(encoding="utf-8"))["mqtt"], state_root)


def visit(rng: random.Random, track: int) -> Decision:
    """A decision like a busy entrance's: mostly residents, some strangers."""
    if rng.random() < 0.7:
        return Decision(
            DecisionType.RECOGNIZED, rng.choice(SUBJECTS), 0.93, 0.1, 9, ("above_threshold",), track
        )
    return Decision(DecisionType.UNKNOWN, None, None, None, 6, ("below_threshold",), track)


@dataclass
class SimUnit:
    config: UnitConfig
    publisher: MqttPublisher
    committed: int = 0

    @property
    def unit(self) -> str:
        return self.config.unit.id

    def depth(self) -> int:
        return self.publisher.outbox.stats().depth


def start_units(configs: list[UnitConfig], registry: Path) -> list[SimUnit]:
    units = []
    for config in configs:
        key = unit_event_key(StateLayout.from_config(config))
        register_key(registry, config.unit.id, key.public_text)
        units.append(SimUnit(config, MqttPublisher(config).start()))
    return units


def run_visits(units: list[SimUnit], rate: float, duration_s: float, seed: int = 7) -> int:
    """``rate`` decisions per second per unit for ``duration_s``; returns how many were committed.

    One thread per unit, as each real unit has its own pipeline and disk: a unit's outbox commit (an
    fsync) does not hold up the others. Start times are staggered across one interval."""
    interval = 1.0 / rate
    start = time.monotonic()

    def one_unit(index: int, unit: SimUnit) -> None:
        rng = random.Random(seed + index)  # noqa: S311 (a simulation, not a secret)
        first = start + interval * index / len(units)
        count = 0
        while (due := first + count * interval) < start + duration_s:
            time.sleep(max(0.0, due - time.monotonic()))
            unit.publisher.publish_decision(visit(rng, count))
            unit.committed += 1
            count += 1

    threads = [
        threading.Thread(target=one_unit, args=(index, unit), name=f"sim-{unit.unit}", daemon=True)
        for index, unit in enumerate(units)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(unit.committed for unit in units)


def forget(units: list[SimUnit], subject: str) -> None:
    """Every unit queues a signed ``subject_forgotten`` in its outbox, as ``device forget`` does."""
    for unit in units:
        key = unit_event_key(StateLayout.from_config(unit.config))
        announce_forgotten(unit.publisher.outbox, key, unit.publisher.topics, subject, "forgotten_on_request")
        unit.committed += 1


def drain(units: list[SimUnit], timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(unit.depth() == 0 for unit in units):
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulated units: the real publisher and outbox, no camera")
    parser.add_argument("--unit", type=Path, action="append", required=True, help="a unit's [mqtt] block")
    parser.add_argument("--state", type=Path, required=True, help="the units' state folders go here")
    parser.add_argument("--keys", type=Path, required=True, help="unit key registry (made or extended)")
    parser.add_argument("--rate", type=float, default=2.0, help="decisions per second per unit")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--forget", default=None, metavar="SUBJECT", help="then forget SUBJECT on every unit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    units = start_units([config_from_block(block, args.state) for block in args.unit], args.keys)
    try:
        sent = run_visits(units, args.rate, args.duration)
        if args.forget:
            forget(units, args.forget)
        drained = drain(units)
    finally:
        for unit in units:
            unit.publisher.close()
    committed = {unit.unit: unit.committed for unit in units}
    print(json.dumps({"visits": sent, "committed": committed, "delivered": drained}), flush=True)
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
