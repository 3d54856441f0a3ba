"""Issue 13, finding 2: a payload crafted to crash the parser must cost that payload, never the client.

Each test plays the sender of a hostile payload: ``[`` x 1500 (RecursionError in json's parser on main),
NaN and duplicate keys, a handler that raises, against the real Mosquitto with the project's ACL.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from command_support import signed
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device.consumers.consumer import ConsumerSettings, EventConsumer, check_event
from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher
from device.events.payloads import MAX_NESTING, PayloadError, Topics, decode, nesting_depth, parse_command
from device.runtime.sdnotify import SystemdNotifier, WatchdogSettings
from device.runtime.service import watch_publisher
from tests.events.test_mqtt_publisher import decision, unit_config, wait_for

DEEP_LIST = b"[" * 1500
POISON = [
    DEEP_LIST,
    b'{"a":' * 1000,
    b'{"command": "claim", "subject_id": NaN}',
    b'{"command": "health", "command": "claim", "subject_id": "s-1"}',
    b"\xff\xfe{}",
    b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1),
]


@pytest.mark.parametrize("payload", POISON, ids=range(len(POISON)))
@pytest.mark.parametrize("kind", ["event", "status", "health", "cmd"])
def test_every_decoder_turns_hostile_bytes_into_a_payload_error(kind: Any, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(kind, payload)


def test_a_deep_nesting_command_is_refused_before_json_parses_it() -> None:
    topics = Topics("entrance", "unit-a")
    with pytest.raises(PayloadError, match="nests 1500 deep"):
        parse_command(topics, topics.cmd("claim"), DEEP_LIST)
    with pytest.raises(PayloadError, match="nests"):
        check_event("entrance/unit-a/events", DEEP_LIST)


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"reasons": ["[[[[", "\\"[[[{{{"]}') == 2
    assert nesting_depth(b'"' + b"[" * 100 + b'"') == 0


class RawClient:
    """An MQTT client with a given identity's certificate: the attacker's tool."""

    def __init__(self, broker: Any, identity: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for(identity)
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_poison_commands_leave_the_unit_delivering_events(mosquitto_broker: Any, tmp_path: Path) -> None:
    unit = "unit-poison"
    reloads: list[int] = []

    def failing_reload() -> None:
        reloads.append(1)
        raise RuntimeError("a handler bug")

    publisher = MqttPublisher(
        unit_config(mosquitto_broker, tmp_path, unit), commands=command_table(on_reload=failing_reload)
    ).start()
    attacker = RawClient(mosquitto_broker, "backend")
    received: list[dict[str, Any]] = []
    consumer = EventConsumer(consumer_settings(mosquitto_broker, unit), lambda e, _t: received.append(e))
    consumer.start()
    try:
        assert consumer.subscribed.wait(10)
        assert publisher.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
        for payload in POISON:
            attacker.publish(f"entrance/{unit}/cmd/claim", payload)
        attacker.publish(f"entrance/{unit}/cmd/reload", signed("reload", unit=unit))
        assert wait_for(lambda: publisher.health_snapshot()["commands"]["rejected"] >= len(POISON))
        assert wait_for(lambda: reloads == [1])
        publisher.publish_decision(decision(1))
        assert wait_for(lambda: len(received) == 1), "the unit stopped delivering after poison commands"
        health = publisher.health_snapshot()
        assert publisher.io_alive()
    finally:
        consumer.stop()
        attacker.close()
        publisher.close()
    assert health["mqtt"]["connected"] and health["mqtt"]["reconnects"] == 0
    assert "mqtt_callback_failed" in health["alarms"]


def consumer_settings(broker: Any, unit: str) -> ConsumerSettings:
    cert, key = broker.cert_for("backend")
    return ConsumerSettings(
        host="localhost", port=broker.port, ca_file=broker.ca_file, cert_file=cert, key_file=key, unit=unit
    )


def test_poison_events_leave_the_consumer_receiving(mosquitto_broker: Any, tmp_path: Path) -> None:
    unit = "unit-poisoned-events"
    invalid: list[str] = []
    received: list[dict[str, Any]] = []

    def crashing_handler(event: dict[str, Any], topic: str) -> None:
        received.append(event)
        if len(received) == 1:
            raise RuntimeError("the consumer's own handler fails once")

    consumer = EventConsumer(
        consumer_settings(mosquitto_broker, unit),
        crashing_handler,
        on_invalid=lambda _topic, problem: invalid.append(problem),
    ).start()
    # The unit's own certificate may write its events topic: the worst a broken or hostile unit can send.
    rogue = RawClient(mosquitto_broker, unit)
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, unit)).start()
    try:
        assert consumer.subscribed.wait(10)
        for payload in POISON:
            rogue.publish(f"entrance/{unit}/events", payload)
        assert wait_for(lambda: len(invalid) == len(POISON))
        publisher.publish_decision(decision(1))
        publisher.publish_decision(decision(2))
        assert wait_for(lambda: len(received) == 2), "the consumer went deaf after poison events"
    finally:
        publisher.close()
        rogue.close()
        consumer.stop()
    assert consumer.counters.callback_errors == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_io_thread_stops_the_watchdog_ping(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0.3)
    notifier = SystemdNotifier(address=str(path), watchdog=WatchdogSettings(interval_s=0.01))
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-watchdog")).start()
    try:
        watch_publisher(notifier, publisher)
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["connected"])
        notifier()
        assert server.recv(64) == b"WATCHDOG=1"
        # Break the I/O thread from outside its callbacks: its next outbox read raises and ends it.
        cast(Any, publisher.outbox)._db.close()
        assert wait_for(lambda: not publisher.io_alive(), 5)
        time.sleep(0.02)
        notifier()
        with pytest.raises(TimeoutError):
            server.recv(64)
        assert "mqtt_io not alive" in caplog.text
    finally:
        server.close()
        # The thread is dead and its db closed, so close() has nothing to drain; only end the loop flag.
        publisher._stop.set()


def test_the_consumer_says_when_the_connection_is_lost_and_back(mosquitto_broker: Any) -> None:
    # `device events tail` prints these lines; before, it went silent when the broker went away.
    lines: list[str] = []
    consumer = EventConsumer(
        consumer_settings(mosquitto_broker, "unit-any"), lambda _e, _t: None, on_connection=lines.append
    ).start()
    try:
        assert consumer.subscribed.wait(10)
        mosquitto_broker.stop()
        assert wait_for(lambda: any(line.startswith("connection lost") for line in lines), 10)
        mosquitto_broker.start()
        assert wait_for(lambda: any(line.startswith("reconnected") for line in lines), 15)
    finally:
        consumer.stop()
    assert [line.split(" ")[0] for line in lines] == ["connection", "reconnected"]
    assert lines[-1].endswith("listening again on entrance/unit-any/events")
