"""Issue 26, "Home Assistant, as its users expect", on the real Mosquitto with the project's ACL: the
diagnostic sensors a Frigate user looks for read figures the unit's health really carries, and the
per-subject "last seen" exists only where the building opted in (and leaves with a forgotten subject)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from device.events.forgotten import announce_forgotten
from device.events.ha_discovery import DIAGNOSTIC_SENSORS
from device.events.mqtt_publisher import MqttPublisher
from device.events.outbox import Outbox
from device.events.payloads import Topics
from device.events.signing import EventKey
from device.layout import StateLayout
from device.types import DecisionType
from tests.events.test_mqtt_publisher import Listener, decision, unit_config, wait_for

RESIDENT = "s-7f3a9c"  # the id `decision(..., RECOGNIZED)` carries
# What Home Assistant's identity (the README's) may read of a unit: all of it that reaches consumers.
HA_VIEW = ["homeassistant/#", "entrance/+/events", "entrance/+/status", "entrance/+/health"]
# The part of a value_template that reads the health JSON: value_json.a.b, or p.a.b (p: the pipeline).
TEMPLATE_PATH = re.compile(r"\b(value_json|p)((?:\.[a-z_]+)+)")


def template_paths(template: str) -> list[list[str]]:
    """Every health key path a template reads, from the payload's root."""
    paths = []
    for root, dotted in TEMPLATE_PATH.findall(template):
        keys = dotted.strip(".").split(".")
        paths.append(keys if root == "value_json" else ["pipeline", *keys])
    return paths


def lookup(payload: dict[str, Any], keys: list[str]) -> Any:
    value: Any = payload
    for key in keys:
        assert isinstance(value, dict) and key in value, f"health has no {'.'.join(keys)}: {payload}"
        value = value[key]
    return value


def test_the_template_reader_sees_every_path_and_misses_a_wrong_one() -> None:
    """The checker below: a template reading a key the health does not have is caught."""
    assert template_paths("{{ p.decisions.presentation_attack | default(0) if p else none }}") == [
        ["pipeline", "decisions", "presentation_attack"]
    ]
    try:
        lookup({"pipeline": {"fps": 1.0}}, ["pipeline", "frames_per_second"])
    except AssertionError:
        return
    raise AssertionError("a missing health key went unnoticed")


def test_the_diagnostic_sensors_read_what_the_unit_health_carries(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-diag"
    health_topic = f"entrance/{unit}/health"
    listener = Listener(mosquitto_broker, HA_VIEW, "home-assistant")
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, unit, ha_discovery=True)).start()
    try:
        # The figures the runner reports (device/runtime/pipeline.py: Pipeline.health, Runner.health).
        publisher.publish_health(
            {"fps": 12.5, "cpu_temp_c": 51.2, "decisions": {"presentation_attack": 2, "recognized": 4}}
        )
        assert wait_for(lambda: any("pipeline" in h for h in listener.payloads(health_topic)))
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
    finally:
        publisher.close()
        listener.close()
    health = next(h for h in listener.payloads(health_topic) if "pipeline" in h)
    configs = {
        m.topic: json.loads(m.payload) for m in listener.messages if m.topic.endswith("/config") and m.payload
    }
    expected = {
        "fps": 12.5,
        "outbox_depth": health["outbox"]["depth"],
        "alarms": health["alarms"],
        "cpu_temperature": 51.2,
        "presentation_attacks": 2,
    }
    assert set(DIAGNOSTIC_SENSORS) == set(expected)
    for name, value in expected.items():
        sensor = configs[f"homeassistant/sensor/{unit}/{name}/config"]
        assert sensor["entity_category"] == "diagnostic", name
        assert (
            sensor["state_topic"] == health_topic
            and sensor["availability_topic"] == f"entrance/{unit}/status"
        )
        assert sensor["unique_id"] == f"entrance_camera_{unit}_{name}"
        # The figure the sensor shows: the deepest path its template reads (the others guard it).
        path = max(template_paths(sensor["value_template"]), key=len)
        assert lookup(health, path) == value, name
    assert configs[f"homeassistant/sensor/{unit}/cpu_temperature/config"]["device_class"] == "temperature"
    alarms = configs[f"homeassistant/sensor/{unit}/alarms/config"]
    assert alarms["json_attributes_topic"] == health_topic
    assert template_paths(alarms["json_attributes_template"]) == [["alarms"]]
    # Counts and machine figures only: no sensor of the retained health reads anything about who passed.
    of_health = [config for config in configs.values() if config.get("state_topic") == health_topic]
    read = {key for config in of_health for path in template_paths(json.dumps(config)) for key in path}
    assert not read & {"active_tracks", "subject", "claim_pending"}


def test_without_the_opt_in_no_last_seen_sensor_or_topic_exists(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-noseen"
    events = f"entrance/{unit}/events"
    listener = Listener(mosquitto_broker, HA_VIEW, "home-assistant")
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, unit, ha_discovery=True)).start()
    try:
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
        # A second event is sent on a later turn of the sender than anything the first one caused.
        publisher.publish_decision(decision(2, DecisionType.UNKNOWN))
        assert wait_for(lambda: len(listener.payloads(events)) == 2)
    finally:
        publisher.close()
        listener.close()
    assert listener.payloads(events)[0]["subject"] == RESIDENT  # a resident was recognised
    assert [m.topic for m in listener.messages if "last_seen" in m.topic] == []
    late = Listener(mosquitto_broker, ["homeassistant/#"], "home-assistant")
    try:
        assert wait_for(lambda: any(m.topic.endswith("/visit/config") for m in late.messages))
        assert wait_for(lambda: any(m.topic.endswith("/presentation_attacks/config") for m in late.messages))
        assert [m.topic for m in late.messages if "last_seen" in m.topic or RESIDENT in m.topic] == []
    finally:
        late.close()


def test_with_the_opt_in_each_recognised_subject_gets_a_retained_last_seen(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-seen"
    base = f"homeassistant/sensor/{unit}/last_seen_{RESIDENT}"
    config = unit_config(mosquitto_broker, tmp_path, unit, ha_discovery=True, ha_last_seen=True)
    listener = Listener(mosquitto_broker, HA_VIEW, "home-assistant")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1, DecisionType.UNKNOWN))  # a stranger: nobody's last seen
        publisher.publish_decision(decision(2, DecisionType.RECOGNIZED))
        assert wait_for(lambda: any(m.topic == f"{base}/state" for m in listener.messages))
    finally:
        publisher.close()
        listener.close()
    (event,) = [e for e in listener.payloads(f"entrance/{unit}/events") if e["type"] == "recognized"]
    sensor = json.loads(next(m.payload for m in listener.messages if m.topic == f"{base}/config"))
    assert sensor["name"] == f"Last seen {RESIDENT}" and sensor["device_class"] == "timestamp"
    assert sensor["state_topic"] == f"{base}/state"
    assert "availability_topic" not in sensor  # when someone came in stays true while the unit is offline
    assert [m.topic for m in listener.messages if m.topic.startswith(base)] == [
        f"{base}/config",
        f"{base}/state",
    ]
    late = Listener(mosquitto_broker, [f"{base}/#"], "home-assistant")
    try:
        assert wait_for(lambda: len(late.messages) == 2)  # retained: HA finds them after a restart
        seen_at = next(m.payload.decode() for m in late.messages if m.topic == f"{base}/state")
    finally:
        late.close()
    # The time of the visit, in the form HA's timestamp sensor reads (the event's ts: when it was decided).
    gap = dt.datetime.fromisoformat(seen_at) - dt.datetime.fromisoformat(event["ts"])
    assert dt.datetime.fromisoformat(seen_at).tzinfo is not None and abs(gap.total_seconds()) < 2


def test_a_forgotten_subject_last_seen_leaves_the_broker(mosquitto_broker: Any, tmp_path: Path) -> None:
    unit = "unit-seen-forget"
    base = f"homeassistant/sensor/{unit}/last_seen_{RESIDENT}"
    config = unit_config(mosquitto_broker, tmp_path, unit, ha_discovery=True, ha_last_seen=True)
    listener = Listener(mosquitto_broker, [f"{base}/#"], "home-assistant")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
        assert wait_for(lambda: any(m.topic == f"{base}/state" and m.payload for m in listener.messages))
        # `device forget` commits the notice to the outbox from its own process; the service sends it.
        other = Outbox(config.mqtt.outbox_path)
        key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
        announce_forgotten(other, key, Topics("entrance", unit), RESIDENT, "forgotten_on_request")
        other.close()
        assert wait_for(
            lambda: (
                {m.topic for m in listener.messages if not m.payload} == {f"{base}/config", f"{base}/state"}
            )
        )
    finally:
        publisher.close()
        listener.close()
    late = Listener(
        mosquitto_broker, [f"{base}/#", f"homeassistant/event/{unit}/visit/config"], "home-assistant"
    )
    try:
        assert wait_for(lambda: any(m.topic.endswith("/visit/config") for m in late.messages))
        assert [m.topic for m in late.messages if "last_seen" in m.topic] == []
    finally:
        late.close()
