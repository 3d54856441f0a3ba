"""Issue 25 point 8: a flood of junk commands cannot flood the unit's log, and cannot forge a log line.

Any consumer certificate may write a unit's cmd topics. Before, each refusal was one WARNING line: the
sender chose how many lines the unit wrote (and, through the text of the refusal, some of their content).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from command_support import signed

from device.events.command_gate import RejectionLog
from device.events.mqtt_publisher import MqttPublisher
from tests.events.test_mqtt_publisher import Listener, unit_config, wait_for

PUBLISHER_LOG = "device.events.mqtt_publisher"
BURST = 10


def rejection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == PUBLISHER_LOG
        and record.levelno >= logging.WARNING
        and "rejected" in record.getMessage()
    ]


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_burst_of_unsigned_commands_gives_a_few_lines_and_an_exact_count_in_health(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unit, sent, batch = "unit-flooded", 3000, 500
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, unit)).start()
    attacker = Listener(mosquitto_broker, [f"entrance/{unit}/health"])  # any consumer certificate
    topic = f"entrance/{unit}/cmd/claim"
    unsigned = json.loads(signed("claim", "s-1", unit=unit))
    del unsigned["sig"]
    caplog.set_level(logging.WARNING, logger=PUBLISHER_LOG)
    try:
        assert publisher.subscribed.wait(10)
        for start in range(0, sent, batch):  # batches, so the broker's per-client queue never overflows
            for _ in range(min(batch, sent - start)):
                attacker.client.publish(topic, json.dumps(unsigned).encode(), qos=1)
            done = start + min(batch, sent - start)
            assert wait_for(lambda n=done: publisher.health_snapshot()["commands"]["rejected"] >= n, 60)
        health = publisher.health_snapshot()["commands"]
    finally:
        attacker.close()
        publisher.close()
    assert health == {"accepted": 0, "rejected": sent, "rejected_unlogged": sent - BURST}
    lines = rejection_lines(caplog)
    assert len(lines) == BURST  # not 3000: the rest are counted, and summed up when the minute is over
    assert all("schema" in line for line in lines)


def test_after_the_interval_one_summary_line_says_how_many_went_unlogged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    rejections = RejectionLog(
        logging.getLogger("test.rejections"), burst=3, interval_s=60, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="test.rejections")
    for _ in range(20_000):
        rejections.rejected("entrance/u/cmd/claim", 12, "does not parse:\x1b]0;owned\x07")
    rejections.tick()  # the I/O loop ticks every turn; nothing more within the minute
    assert len(caplog.records) == 3
    now[0] = 61.0
    rejections.tick()
    rejections.tick()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 4 and messages[-1].startswith("19997 more commands rejected in the last 61 s")
    assert not any("\x1b" in message for message in messages)
    assert rejections.unlogged == 19_997
    rejections.rejected("entrance/u/cmd/claim", 12, "again")  # a new interval logs again
    assert len(caplog.records) == 5
