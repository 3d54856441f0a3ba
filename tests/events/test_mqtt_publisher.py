"""The unit's MQTT publisher against the real Mosquitto with the project's TLS config and ACL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from command_support import signed, trust_file
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device import __version__
from device.config import UnitConfig, parse_config
from device.consumers.consumer import Deduper, check_event
from device.events.command_gate import command_table
from device.events.mqtt_publisher import Backoff, MqttPublisher, MqttSetupError
from device.events.payloads import PayloadError, decode
from device.identity.decide import ClaimSlot
from device.types import Decision, DecisionType

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def unit_config(broker: Any, tmp_path: Path, unit: str, *, cert_identity: str | None = None,
                **mqtt_extra: Any) -> UnitConfig:  # fmt: skip
    cert, key = broker.cert_for(cert_identity or unit)
    mqtt_extra.setdefault("command_keys", str(trust_file(tmp_path / f"{unit}-trust")))
    # No NTP client disciplines the kernel clock of the build machines (containers); the clock gate has
    # its own tests through the publisher's seam (tests/events/test_clock_gate.py).
    mqtt_extra.setdefault("clock_check", "off")
    return parse_config(
        {
            "unit": {"id": unit, "state_dir": str(tmp_path / "state")},
            "mqtt": {
                "enabled": True,
                "host": "localhost",
                "port": broker.port,
                "tls": {"ca_file": str(broker.ca_file), "cert_file": str(cert), "key_file": str(key)},
                "outbox_path": str(tmp_path / f"{unit}-outbox.db"),
                "health_interval_s": 1.0,
                "reconnect_backoff_max_s": 1.0,
                "keepalive_s": 5,
                **mqtt_extra,
            },
        }
    )


class Listener:
    """A consumer ("backend") that records every message on the given topic filters."""

    def __init__(self, broker: Any, filters: list[str], identity: str = "backend") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for(identity)
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(topic, 1) for topic in filters])
        assert self._subscribed.wait(5)

    def payloads(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in list(self.messages) if m.topic == topic]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listen(mosquitto_broker: Any) -> Iterator[Callable[[list[str]], Listener]]:
    listeners: list[Listener] = []

    def make(filters: list[str]) -> Listener:
        listeners.append(Listener(mosquitto_broker, filters))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


def decision(track: int, kind: DecisionType = DecisionType.UNKNOWN) -> Decision:
    subject = "s-7f3a9c" if kind is DecisionType.RECOGNIZED else None
    return Decision(kind, subject, 0.95 if subject else None, 0.05 if subject else None, 5, ("x",), track)


def test_events_arrive_in_seq_order_with_online_status_and_health(
    mosquitto_broker: Any, tmp_path: Path, listen: Callable[[list[str]], Listener]
) -> None:
    base = "entrance/unit-order"
    listener = listen([f"{base}/events", f"{base}/status", f"{base}/health"])
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-order")).start()
    try:
        for track in range(30):
            publisher.publish_decision(
                decision(track, DecisionType.RECOGNIZED if track % 3 else DecisionType.UNKNOWN)
            )
        assert wait_for(lambda: len(listener.payloads(f"{base}/events")) == 30)
        assert wait_for(lambda: publisher.outbox.stats().depth == 0)
        publisher.publish_health({"fps": 12.5, "accelerator": {"blazeface_full_range": "cpu"}})
        assert wait_for(lambda: any("pipeline" in h for h in listener.payloads(f"{base}/health")), 5)
    finally:
        publisher.close()
    events = listener.payloads(f"{base}/events")
    assert [event["seq"] for event in events] == list(range(1, 31))
    assert all(check_event(f"{base}/events", json.dumps(event).encode()) for event in events)
    states = [(s["state"], s["reason"]) for s in listener.payloads(f"{base}/status")]
    assert states[0] == ("online", "connected") and states[-1] == ("offline", "shutdown")
    health = [h for h in listener.payloads(f"{base}/health") if "pipeline" in h][-1]
    assert health["pipeline"]["fps"] == 12.5 and health["outbox"]["last_seq"] >= 1


def test_events_made_while_the_broker_is_down_are_delivered_after_it_returns(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    from device.consumers.consumer import ConsumerSettings, EventConsumer

    config = unit_config(mosquitto_broker, tmp_path, "unit-replay")
    cert, key = mosquitto_broker.cert_for("backend")
    received: list[dict[str, Any]] = []
    # Subscribed before the outage, with a persistent session: the broker keeps its queue across its
    # own restart, so the outage events must arrive at this consumer, not only be acknowledged.
    consumer = EventConsumer(
        ConsumerSettings(
            host="localhost", port=mosquitto_broker.port, ca_file=mosquitto_broker.ca_file, cert_file=cert,
            key_file=key, unit="unit-replay", client_id="outage-consumer", session_expiry_s=600,
        ),
        lambda event, _topic: received.append(event),
    ).start()  # fmt: skip
    publisher = MqttPublisher(config).start()
    try:
        assert consumer.subscribed.wait(10)
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["connected"])
        mosquitto_broker.stop()
        for track in range(10):
            publisher.publish_decision(decision(track))
        assert wait_for(lambda: "broker_disconnected" in publisher.health_snapshot()["alarms"])
        assert publisher.outbox.stats().depth == 10
        mosquitto_broker.start()
        assert wait_for(lambda: publisher.outbox.stats().depth == 0, 15)
        for track in range(10, 15):
            publisher.publish_decision(decision(track))
        assert wait_for(lambda: len(received) >= 15, 20), [event["seq"] for event in received]
    finally:
        publisher.close()
        consumer.stop()
    assert [event["seq"] for event in received] == list(range(1, 16))


@pytest.mark.slow
def test_a_refused_publish_keeps_the_event_raises_an_alarm_and_does_not_spin(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    # The certificate says unit-real, the config says unit-fake: the ACL refuses unit-fake's topics (0x87).
    config = unit_config(mosquitto_broker, tmp_path, "unit-fake", cert_identity="unit-real")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1))
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["refused"] >= 1)
        time.sleep(3.0)  # an observation window (how often it retries), not a wait for a broker state
        health = publisher.health_snapshot()
    finally:
        publisher.close()
    from device.events.outbox import Outbox

    kept = Outbox(config.mqtt.outbox_path)
    assert [entry.seq for entry in kept.pending()] == [1]
    assert "publish_refused" in health["alarms"]
    assert health["mqtt"]["last_refusal"].startswith("0x87")
    # Backoff after a refusal: a handful of attempts in 3 s, not hundreds.
    assert health["mqtt"]["refused"] < 10


def test_commands_claim_reload_health_are_taken_and_anything_else_is_counted_as_rejected(
    mosquitto_broker: Any, tmp_path: Path, listen: Callable[[list[str]], Listener]
) -> None:
    base = "entrance/unit-cmd"
    claims = ClaimSlot(window_s=60)
    reloads: list[bool] = []
    commander = listen([f"{base}/health"])
    # A retained command would act again on every reconnect: it arrives flagged retained and is refused.
    commander.publish(f"{base}/cmd/reload", signed("reload", unit="unit-cmd"), retain=True)
    publisher = MqttPublisher(
        unit_config(mosquitto_broker, tmp_path, "unit-cmd"),
        commands=command_table(on_claim=claims.set, on_reload=lambda: reloads.append(True)),
    ).start()
    try:
        assert publisher.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
        commander.publish(f"{base}/cmd/claim", claim_payload("s-42", "r-1", unit="unit-cmd"))
        commander.publish(f"{base}/cmd/reload", signed("reload", unit="unit-cmd"))
        commander.publish(f"{base}/cmd/export", json.dumps({"command": "export"}).encode())
        commander.publish(
            f"{base}/cmd/claim", b'{"command": "claim", "subject_id": "s-1", "templates": true}'
        )
        commander.publish(f"{base}/cmd/claim", b"not json")
        # Another unit's claim must never reach this one.
        commander.publish(
            "entrance/unit-other/cmd/claim", json.dumps({"command": "claim", "subject_id": "s-9"}).encode()
        )
        before = len(commander.payloads(f"{base}/health"))
        commander.publish(f"{base}/cmd/health", signed("health", unit="unit-cmd"))
        assert wait_for(lambda: publisher.health_snapshot()["commands"]["rejected"] >= 4)
        assert wait_for(lambda: len(commander.payloads(f"{base}/health")) > before, 3)
        counts = publisher.health_snapshot()["commands"]
    finally:
        publisher.close()
        commander.publish(f"{base}/cmd/reload", b"", retain=True)  # clear the retained command
    assert claims.peek() == "s-42"
    assert reloads == [True]
    assert counts == {"accepted": 3, "rejected": 4, "rejected_unlogged": 0}


def claim_payload(
    subject: str, request_id: str, *, unit: str, issued: float | None = None, ttl_s: float = 30.0
) -> bytes:
    """A claim for ``unit`` signed by the test commander, whom ``unit_config`` makes the unit trust."""
    return signed("claim", subject, unit=unit, request_id=request_id, issued=issued, ttl_s=ttl_s)


def test_home_assistant_discovery_announces_the_visit_event_triggers_and_accelerator(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    # The identity the README gives Home Assistant: the dev broker issues it and its ACL delivers to it.
    topics = ["homeassistant/+/unit-ha/#", "entrance/unit-ha/events"]
    listener = Listener(mosquitto_broker, topics, "home-assistant")
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-ha", ha_discovery=True)).start()
    try:
        last_config = "homeassistant/sensor/unit-ha/accelerator_embedder/config"
        assert wait_for(lambda: any(m.topic == last_config for m in listener.messages))
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
        assert wait_for(lambda: listener.payloads("entrance/unit-ha/events"))
    finally:
        publisher.close()
        listener.close()
    configs = {m.topic: m.payload for m in listener.messages if m.topic.startswith("homeassistant/")}
    visit = json.loads(configs["homeassistant/event/unit-ha/visit/config"])
    assert visit["state_topic"] == "entrance/unit-ha/events"
    assert visit["availability_topic"] == "entrance/unit-ha/status"
    assert visit["event_types"] == ["recognized", "unknown", "insufficient_quality", "presentation_attack"]
    for kind in visit["event_types"]:
        trigger = json.loads(configs[f"homeassistant/device_automation/unit-ha/{kind}/config"])
        assert trigger["automation_type"] == "trigger" and trigger["payload"] == kind
        assert trigger["topic"] == "entrance/unit-ha/events"
        assert trigger["device"]["identifiers"] == visit["device"]["identifiers"]
    assert "homeassistant/sensor/unit-ha/accelerator_detector/config" in configs
    # What an HA user expects of a device, and ids that cannot collide with another integration's.
    assert visit["device"]["manufacturer"] and visit["device"]["serial_number"] == "unit-ha"
    assert visit["device"]["sw_version"] == __version__
    entities = [json.loads(p) for t, p in configs.items() if p and "device_automation" not in t]
    announced_ids = [entity["unique_id"] for entity in entities]
    assert announced_ids and all(uid.startswith("entrance_camera_unit-ha_") for uid in announced_ids)
    problem = json.loads(configs["homeassistant/binary_sensor/unit-ha/problem/config"])
    assert (problem["device_class"], problem["state_topic"]) == ("problem", "entrance/unit-ha/health")
    connected = json.loads(configs["homeassistant/binary_sensor/unit-ha/connected/config"])
    assert connected["device_class"] == "connectivity"
    assert connected["state_topic"] == "entrance/unit-ha/status"
    assert "availability_topic" not in connected  # offline is "off", not "unavailable"
    # The "last decision" sensor of earlier releases is removed (an empty retained config).
    assert configs["homeassistant/sensor/unit-ha/last_decision/config"] == b""
    # Discovery configs are retained: a Home Assistant that subscribes later still finds every one.
    announced = {topic for topic, payload in configs.items() if payload}
    late = Listener(mosquitto_broker, ["homeassistant/+/unit-ha/#"])
    try:
        assert wait_for(lambda: len(late.messages) >= len(announced))
        retained = {m.topic: m.retain for m in late.messages}
    finally:
        late.close()
    assert retained == dict.fromkeys(announced, True)


def test_the_first_pipeline_report_goes_out_at_once_not_after_the_health_interval(
    mosquitto_broker: Any, tmp_path: Path, listen: Callable[[list[str]], Listener]
) -> None:
    health_topic = "entrance/unit-first-health/health"
    listener = listen([health_topic])
    config = unit_config(mosquitto_broker, tmp_path, "unit-first-health", health_interval_s=3600.0)
    publisher = MqttPublisher(config).start()
    try:
        assert wait_for(lambda: listener.payloads(health_topic))  # the health of the connection
        publisher.publish_health({"fps": 12.5, "accelerator": {"detector": "cpu"}})
        # Home Assistant's sensors read the pipeline part: it must not wait an hour.
        assert wait_for(lambda: any("pipeline" in h for h in listener.payloads(health_topic)), timeout=5)
    finally:
        publisher.close()


def test_tls_is_mandatory(tmp_path: Path) -> None:
    config = parse_config({"mqtt": {"enabled": True, "outbox_path": str(tmp_path / "o.db")}})
    with pytest.raises(MqttSetupError, match="TLS is mandatory"):
        MqttPublisher(config)


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    import random

    backoff = Backoff(0.5, 8.0)
    rng = random.Random(1)
    delays = [backoff.delay(attempt, rng) for attempt in range(10)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(4.0 <= delay <= 8.0 for delay in delays[5:])
    assert len({round(delay, 6) for delay in delays[5:]}) > 1  # jittered, not lock-step


def test_consumers_drop_redeliveries_and_events_on_a_foreign_topic() -> None:
    dedup = Deduper(capacity=2)
    assert dedup.first_time("a") and not dedup.first_time("a")
    assert dedup.first_time("b") and dedup.first_time("c") and dedup.first_time("a")  # "a" aged out
    from device.events.payloads import build_event

    event = build_event(decision(1), seq=1, unit="unit-x", models={}, gallery_version=None)
    with pytest.raises(PayloadError, match="arrived on"):
        check_event("entrance/unit-y/events", json.dumps(event).encode())
    assert decode("event", json.dumps(event).encode())["unit"] == "unit-x"


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_events_tail_prints_what_a_consumer_receives(mosquitto_broker: Any, tmp_path: Path) -> None:
    from device.events.signing import EventKey, registry_text
    from device.layout import StateLayout

    config = unit_config(mosquitto_broker, tmp_path, "unit-tail")
    public = EventKey.load_or_create(StateLayout.from_config(config).event_key).public_text
    (tmp_path / "keys.json").write_text(registry_text({"unit-tail": public}))
    cert, key = mosquitto_broker.cert_for("tail")
    tail = subprocess.Popen(
        [sys.executable, "-m", "device", "events", "tail", "--json", "--count", "3", "--timeout", "30",
         "--host", "localhost", "--port", str(mosquitto_broker.port), "--ca", str(mosquitto_broker.ca_file),
         "--cert", str(cert), "--key", str(key), "--unit", "unit-tail",
         "--keys", str(tmp_path / "keys.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert tail.stderr is not None
    assert "listening on entrance/unit-tail/events" in tail.stderr.readline()  # subscribed: safe to publish
    publisher = MqttPublisher(config).start()
    try:
        for track in range(3):
            publisher.publish_decision(decision(track, DecisionType.RECOGNIZED))
        out, err = tail.communicate(timeout=40)
    finally:
        publisher.close()
    assert tail.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert all(line["subject"] == "s-7f3a9c" for line in lines)
