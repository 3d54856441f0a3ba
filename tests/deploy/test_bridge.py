"""Issue 27: a building's Mosquitto bridged to a central Mosquitto (both real, both with the broker kit's
config). The bridge remaps topics under the building's prefix and keeps its session; the central ACL
confines each building to its prefix; a remapped event still verifies and a forged one does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from deploy.broker.bridge import BridgeError, BridgeSettings, render_bridge, render_central_acl
from deploy.broker.local import HOST, LocalBroker
from device.consumers.consumer import ConsumerSettings, EventConsumer
from device.events.mqtt_publisher import MqttPublisher
from device.events.payloads import encode, uuid7
from device.events.signing import EventKey, EventVerifier
from device.layout import StateLayout
from device.types import Decision, DecisionType
from tests.events.test_mqtt_publisher import unit_config, wait_for

NOT_AUTHORISED = 0x87


def test_the_bridge_keeps_its_session_forwards_at_qos1_and_remaps_under_the_building() -> None:
    files = Path("/etc/entrance")
    text = render_bridge(
        BridgeSettings("north", "central.example", 8883, files / "ca", files / "crt", files / "key"),
        "entrance",
    )
    lines = text.splitlines()
    for line in (
        "address central.example:8883",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        "local_cleansession false",
        "bridge_cafile /etc/entrance/ca",
        "bridge_certfile /etc/entrance/crt",
        "bridge_keyfile /etc/entrance/key",
        "bridge_insecure false",
        "topic +/events out 1 entrance/ site/north/entrance/",
        "topic +/status out 1 entrance/ site/north/entrance/",
        "topic +/health out 1 entrance/ site/north/entrance/",
        "topic +/cmd/# in 1 entrance/ site/north/entrance/",
    ):
        assert line in lines
    with pytest.raises(BridgeError):
        render_bridge(BridgeSettings("north/#", "h", 1, files, files, files), "entrance")
    with pytest.raises(BridgeError, match="both"):
        render_central_acl(("north",), ("north",), "entrance")


class Client:
    """A raw MQTT v5 client with a certificate, recording PUBACK reason codes and deliveries."""

    def __init__(self, broker: LocalBroker, identity: str) -> None:
        self.acks: dict[int, int] = {}
        self.received: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{identity}", protocol=mqtt.MQTTv5
        )
        cert, key = broker.cert_for(identity)
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_publish = self._published
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect(HOST, broker.port)
        self.client.loop_start()

    def _published(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self.acks[mid] = rc.value

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        assert wait_for(lambda: info.mid in self.acks, 5)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBroker, LocalBroker]]:
    root = tmp_path_factory.mktemp("bridge")
    central = LocalBroker(root / "central", central_site="site", consumers=("archive",))
    central.start()
    cert, key = central.cert_for("north")
    central.cert_for("south")
    bridge = BridgeSettings("north", HOST, central.port, central.ca_file, cert, key, restart_timeout=(1, 2))
    building = LocalBroker(root / "north", bridge=bridge, consumers=("backend",))
    building.cert_for("lobby-1")
    building.start()
    yield central, building
    building.stop()
    central.stop()


def test_a_building_publishing_outside_its_prefix_is_refused_and_nothing_is_delivered(
    brokers: tuple[LocalBroker, LocalBroker],
) -> None:
    central, _ = brokers
    archive = Client(central, "archive")
    north = Client(central, "north")
    try:
        archive.client.subscribe("site/+/entrance/+/events", qos=1)
        assert archive.subscribed.wait(5)
        assert north.publish("site/south/entrance/gate/events", b"{}") == NOT_AUTHORISED
        assert north.publish("site/north/other/gate/events", b"{}") == NOT_AUTHORISED
        assert north.publish("site/north/entrance/gate/cmd/claim", b"{}") == NOT_AUTHORISED
        assert north.publish("site/north/entrance/gate/events", b"own") < 0x80
        assert wait_for(lambda: len(archive.received) >= 1, 5)
        time.sleep(0.5)  # anything refused would have arrived by now
        assert archive.received == [("site/north/entrance/gate/events", b"own")]
    finally:
        archive.close()
        north.close()


def test_a_remapped_event_still_verifies_and_a_forged_one_does_not(
    brokers: tuple[LocalBroker, LocalBroker], tmp_path: Path
) -> None:
    central, building = brokers
    config = unit_config(building, tmp_path, "lobby-1")
    unit_key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    cert, key = central.cert_for("archive")
    got: list[dict[str, Any]] = []
    refused: list[str] = []
    consumer = EventConsumer(
        ConsumerSettings(HOST, central.port, central.ca_file, cert, key, prefix="site/+/entrance"),
        lambda event, topic: got.append(event | {"_topic": topic}),
        on_invalid=lambda _topic, problem: refused.append(problem),
        verifier=EventVerifier({"lobby-1": unit_key.private.public_key()}),
    ).start()
    publisher = MqttPublisher(config).start()
    north = Client(central, "north")  # the building's own identity: allowed on its prefix, not a unit
    try:
        assert consumer.subscribed.wait(10)
        publisher.publish_decision(Decision(DecisionType.RECOGNIZED, "s-anna", 0.93, 0.2, 5, ("x",), 1))
        assert wait_for(lambda: len(got) == 1, 15), refused
        event = got[0]
        assert event["_topic"] == "site/north/entrance/lobby-1/events"  # remapped, and verified
        # Whoever holds the bridge (or the central broker) changes a signed event: refused.
        changes = {"subject": "s-mallory", "seq": 2, "event_id": uuid7()}
        forged = {k: v for k, v in event.items() if k != "_topic"} | changes
        assert north.publish("site/north/entrance/lobby-1/events", encode("event", forged)) < 0x80
        assert wait_for(lambda: len(refused) == 1, 5)
        assert "wrongly signed" in refused[0]
        # A genuine event moved to another unit's topic: refused on the unit/topic check.
        assert (
            north.publish("site/north/entrance/lobby-2/events", encode("event", unit_key.sign(forged))) < 0x80
        )
        assert wait_for(lambda: len(refused) == 2, 5)
        assert "arrived on" in refused[1]
        assert len(got) == 1
    finally:
        north.close()
        publisher.close()
        consumer.stop()
