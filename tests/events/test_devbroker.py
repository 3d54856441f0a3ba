"""The dev broker `make run` uses: a unit publishes through it and `device events tail` reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import parse_config
from device.events.mqtt_publisher import MqttPublisher
from device.lab.devbroker import start_dev_broker
from device.types import Decision, DecisionType

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_unit_and_a_tail_consumer_meet_on_the_dev_broker(tmp_path: Path) -> None:
    dev = start_dev_broker(tmp_path / "dev-broker", unit_id="demo-unit")
    try:
        tail = subprocess.Popen(
            [sys.executable, "-m", "device", "events", "tail", "--json", "--count", "2", "--timeout", "30",
             *dev.tail_args()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert tail.stderr is not None and "listening" in tail.stderr.readline()
        mqtt = {**dev.mqtt_section(), "outbox_path": str(tmp_path / "outbox.db")}
        publisher = MqttPublisher(parse_config({"unit": {"id": "demo-unit"}, "mqtt": mqtt})).start()
        try:
            for track in (1, 2):
                publisher.publish_decision(Decision(DecisionType.UNKNOWN, None, None, None, 3, (), track))
            out, _ = tail.communicate(timeout=40)
        finally:
            publisher.close()
    finally:
        dev.stop()
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]
