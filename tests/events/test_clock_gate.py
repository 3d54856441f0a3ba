"""Issue 25 point 1: time-bound commands are refused until the unit's clock is synchronised.

The attack: a Pi has no battery clock; after a power cut it runs hours behind until NTP sets it. A
claim recorded back then, long expired, is "in time" by that clock. The unit cannot tell a wrong clock
from the expiry alone, so it refuses every command until the kernel says NTP set the clock, and says so
in health. The test drives the publisher's clock seam; the command, broker and gate are the real ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from command_support import signed

from device.events.clock import kernel_clock_synchronised
from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher
from tests.events.test_mqtt_publisher import Listener, unit_config, wait_for


def test_commands_wait_for_a_synchronised_clock_and_health_says_why(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unit = "unit-clock"
    synchronised = [False]
    applied: list[str] = []
    publisher = MqttPublisher(
        unit_config(mosquitto_broker, tmp_path, unit, clock_check="kernel"),
        commands=command_table(on_claim=applied.append),
        clock_synchronised=lambda: synchronised[0],
    ).start()
    attacker = Listener(mosquitto_broker, [f"entrance/{unit}/health"])
    topic = f"entrance/{unit}/cmd/claim"
    caplog.set_level(logging.WARNING, logger="device.events.mqtt_publisher")
    try:
        assert publisher.subscribed.wait(10)
        # "in time" by the unit's clock, which nobody has set yet
        attacker.publish(topic, signed("claim", "s-recorded", unit=unit, request_id="r-old"))
        assert wait_for(lambda: publisher.health_snapshot()["commands"]["rejected"] == 1)
        health = publisher.health_snapshot()
        assert health["clock_synchronised"] is False and "clock_unsynchronised" in health["alarms"]
        assert any("clock not synchronised" in record.getMessage() for record in caplog.records)

        synchronised[0] = True  # NTP has set the clock
        attacker.publish(topic, signed("claim", "s-fresh", unit=unit, request_id="r-new"))
        assert wait_for(lambda: applied == ["s-fresh"])
        health = publisher.health_snapshot()
    finally:
        attacker.close()
        publisher.close()
    assert applied == ["s-fresh"]
    assert health["clock_synchronised"] is True and "clock_unsynchronised" not in health["alarms"]


def test_by_default_the_unit_asks_the_kernel(mosquitto_broker: Any, tmp_path: Path) -> None:
    config = unit_config(mosquitto_broker, tmp_path, "unit-kernel-clock", clock_check="kernel")
    assert type(config.mqtt).model_fields["clock_check"].default == "kernel"
    publisher = MqttPublisher(config)
    try:
        assert publisher.health_snapshot()["clock_synchronised"] is kernel_clock_synchronised()
    finally:
        publisher.close()


def test_with_the_check_off_health_does_not_claim_to_know(mosquitto_broker: Any, tmp_path: Path) -> None:
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-no-clock", clock_check="off"))
    try:
        assert "clock_synchronised" not in publisher.health_snapshot()
    finally:
        publisher.close()
