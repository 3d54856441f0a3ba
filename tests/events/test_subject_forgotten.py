"""Issue 27: when a unit forgets a subject it publishes a signed ``subject_forgotten`` (the pseudonymous id,
no name), so archives can tombstone that subject. ``device forget`` and ``purge-expired`` run beside the
service: they commit the event to the unit's outbox, and the running service publishes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from gallery_helpers import Unit, enrol_random, init_unit

from device.cli import main
from device.events.forgotten import announce_forgotten
from device.events.mqtt_publisher import MqttPublisher
from device.events.outbox import Outbox
from device.events.payloads import Topics, decode
from device.events.signing import EventKey, EventVerifier
from device.layout import StateLayout
from device.types import DecisionType
from tests.events.test_mqtt_publisher import Listener, decision, unit_config, wait_for


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    made = init_unit(tmp_path)
    text = made.config_path.read_text(encoding="utf-8")
    made.config_path.write_text(text.replace("[mqtt]\n", "[mqtt]\nenabled = true\n", 1), encoding="utf-8")
    return made


def outbox_events(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    return [decode("event", bytes(row[0])) for row in rows]


def test_forget_queues_a_signed_notice_naming_only_the_pseudonymous_id(
    unit: Unit, capsys: pytest.CaptureFixture[str]
) -> None:
    info, _ = enrol_random(unit.store(), "Anna Example", seed=4)
    assert main(["--config", str(unit.config_path), "forget", info.subject_id, "--yes"]) == 0
    assert "queued subject_forgotten" in capsys.readouterr().out
    config = unit.config
    (event,) = outbox_events(config.mqtt.outbox_path)
    assert event["type"] == "subject_forgotten" and event["subject"] == info.subject_id
    assert event["unit"] == config.unit.id and event["reasons"] == ["forgotten_on_request"]
    assert "Anna" not in str(event)  # the name is gone with the subject's data key
    key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    EventVerifier({config.unit.id: key.private.public_key()}).verify(event)  # raises if not the unit's


def test_a_unit_without_mqtt_forgets_without_an_outbox(tmp_path: Path) -> None:
    plain = init_unit(tmp_path)
    info, _ = enrol_random(plain.store(), "No Broker", seed=5)
    assert main(["--config", str(plain.config_path), "forget", info.subject_id, "--yes"]) == 0
    assert not plain.config.mqtt.outbox_path.exists()


def test_the_running_service_publishes_a_notice_another_process_queued(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    listener = Listener(mosquitto_broker, ["entrance/unit-forget/events"])
    config = unit_config(mosquitto_broker, tmp_path, "unit-forget")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
        assert wait_for(lambda: len(listener.payloads("entrance/unit-forget/events")) == 1, 10)
        # `device forget` opens the outbox on its own connection, as a separate process does.
        other = Outbox(config.mqtt.outbox_path)
        key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
        announce_forgotten(other, key, Topics("entrance", "unit-forget"), "s-anna", "forgotten_on_request")
        other.close()
        assert wait_for(lambda: len(listener.payloads("entrance/unit-forget/events")) == 2, 10)
        assert wait_for(lambda: publisher.outbox.stats().depth == 0, 5)  # its count caught up
    finally:
        publisher.close()
        listener.close()
    first, notice = listener.payloads("entrance/unit-forget/events")
    assert (notice["type"], notice["subject"], notice["seq"]) == (
        "subject_forgotten",
        "s-anna",
        first["seq"] + 1,
    )
