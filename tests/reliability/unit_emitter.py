"""A stand-in unit for the fault tests: the real MqttPublisher fed with decisions at a fixed rate.

    python tests/reliability/unit_emitter.py CONFIG --rate 10

It runs until SIGTERM (clean stop: drain, status offline, normal DISCONNECT) or SIGKILL (the tests' crash).
The decisions vary like a real entrance's (recognized, unknown, insufficient quality); what the tests
check is what the publisher does with them, so no camera or model is involved.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
from pathlib import Path

from device.config import load_config
from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher
from device.identity.decide import ClaimSlot
from device.types import Decision, DecisionType

SUBJECTS = ("s-7f3a9c", "s-01b2c3d4e5f6", "resident-" + "x" * 55)


def decision(rng: random.Random, track_id: int) -> Decision:
    kind = rng.choice(list(DecisionType))
    if kind is DecisionType.RECOGNIZED:
        return Decision(
            kind,
            rng.choice(SUBJECTS),
            rng.uniform(0.93, 0.99),
            rng.uniform(0.01, 0.2),
            rng.randint(2, 40),
            ("above_threshold",),
            track_id,
        )
    if kind is DecisionType.UNKNOWN:
        return Decision(
            kind,
            None,
            rng.uniform(0.5, 0.92),
            rng.uniform(0, 0.1),
            rng.randint(2, 40),
            ("below_threshold",),
            track_id,
        )
    return Decision(
        kind,
        None,
        None,
        None,
        rng.randint(1, 10),
        ("no_usable_sample", "blurred", "turned_away", "too_small"),
        track_id,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--rate", type=float, default=10.0, help="decisions per second")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s emitter %(levelname)s %(message)s")
    config = load_config(args.config)
    claims = ClaimSlot(config.matching.claim_window_s)
    applied = config.unit.state_dir / "claims-applied.log"
    applied.parent.mkdir(parents=True, exist_ok=True)

    def take_claim(subject: str) -> None:
        # What reached the pipeline's claim slot, for the harness's stale-claim check.
        claims.set(subject)
        with applied.open("a", encoding="utf-8") as log:
            log.write(subject + "\n")

    publisher = MqttPublisher(
        config,
        commands=command_table(on_claim=take_claim),
        models={"detector": "blazeface_full_range@int8", "embedder": "dlib_resnet_v1@int8"},
        gallery_version=lambda: "3-a1b2c3",
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    rng = random.Random()
    track = 0
    while not stop.wait(1.0 / args.rate):
        track += 1
        publisher.publish_decision(decision(rng, track))
        publisher.publish_health(
            {
                "fps": 15.0,
                "frames": track * 10,
                "decisions": track,
                "stage_ms": {"detect": 5.1, "embed": 4.2},
                "accelerator": {
                    "blazeface_full_range": "cpu:fallback (no Edge TPU)",
                    "dlib_resnet_v1": "cpu:fallback (no Edge TPU)",
                },
                "gallery": {"size": 3, "version": "3-a1b2c3", "state": "ok"},
            }
        )
    publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
