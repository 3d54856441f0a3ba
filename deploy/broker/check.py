"""`make broker-check`: the rendered broker config loads in a real Mosquitto and does its job.

Makes a throw-away PKI, renders the fleet config (only port, bind address, log destination and the
run-as user differ from production), starts Mosquitto, then checks with a unit and a consumer
certificate: the unit's event reaches the consumer, a publish on another unit's topic is refused
(PUBACK 0x87), so is a consumer publishing events, and a client without a certificate is refused.
Prints one JSON line; exit 0 when all held.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import pwd
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from deploy.broker.local import LocalBroker

TIMEOUT_S = 5.0
SERVICE_USER = "mosquitto"


@dataclass
class _Client:
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)


def _connect(broker: LocalBroker, identity: str | None) -> _Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{identity}", protocol=mqtt.MQTTv5)
    cert, key = broker.cert_for(identity) if identity else (None, None)
    client.tls_set(
        ca_certs=str(broker.ca_file),
        certfile=str(cert) if cert else None,
        keyfile=str(key) if key else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
    state = _Client(client)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.is_failure:
            state.refused.append(str(rc))
        state.connected.set()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with state.changed:
            state.acks[mid] = rc.value
            state.changed.notify_all()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with state.changed:
            state.received.append(message.topic)
            state.changed.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_subscribe = lambda *_args: state.subscribed.set()
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    return state


def _publish(state: _Client, topic: str) -> int | None:
    info = state.client.publish(topic, b"{}", qos=1)
    with state.changed:
        state.changed.wait_for(lambda: info.mid in state.acks, TIMEOUT_S)
        return state.acks.get(info.mid)


def _service_user() -> str | None:
    """As root with the Debian `mosquitto` user present, check the production layout: Mosquitto drops
    to that user before it reads its certificates, so ownership mistakes show up here."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


def run_check(root: Path, prefix: str) -> dict[str, object]:
    service_user = _service_user()
    root.chmod(0o711)  # the service user must be able to reach its files below
    broker = LocalBroker(root, prefix=prefix, consumers=("backend",), service_user=service_user)
    broker.start()
    clients: list[_Client] = []
    try:
        unit = _connect(broker, "check-unit")
        consumer = _connect(broker, "backend")
        clients += [unit, consumer]
        unit_ok = unit.connected.wait(TIMEOUT_S) and not unit.refused
        consumer_ok = consumer.connected.wait(TIMEOUT_S) and not consumer.refused
        consumer.client.subscribe(f"{prefix}/+/events", qos=1)
        consumer.subscribed.wait(TIMEOUT_S)
        denied = _publish(unit, f"{prefix}/other-unit/events")
        # A consumer certificate is no unit: not under its own name, not under a unit's (issue 13).
        consumer_forgery = [
            _publish(consumer, f"{prefix}/backend/events"),
            _publish(consumer, f"{prefix}/check-unit/events"),
        ]
        own = _publish(unit, f"{prefix}/check-unit/events")
        with consumer.changed:
            consumer.changed.wait_for(lambda: bool(consumer.received), TIMEOUT_S)
        anonymous = _connect(broker, None)
        clients.append(anonymous)
        anonymous.connected.wait(1.0)
        anonymous_connected = anonymous.connected.is_set() and not anonymous.refused
        result: dict[str, object] = {
            "mosquitto_loaded_config": True,
            "broker_user": service_user or getpass.getuser(),
            "unit_connected": unit_ok,
            "consumer_connected": consumer_ok,
            "own_event_puback": own,
            "foreign_topic_puback": denied,
            "consumer_forgery_puback": consumer_forgery,
            "consumer_received": consumer.received,
            "anonymous_refused": not anonymous_connected,
        }
        result["ok"] = (
            unit_ok
            and consumer_ok
            and own is not None
            and own < 0x80
            and denied == 0x87
            and consumer_forgery == [0x87, 0x87]
            and consumer.received == [f"{prefix}/check-unit/events"]
            and not anonymous_connected
        )
        return result
    finally:
        for state in clients:
            state.client.disconnect()
            state.client.loop_stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="load the broker config in a real Mosquitto and check it")
    parser.add_argument("--prefix", default="entrance")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="broker-check-") as tmp:
        try:
            result = run_check(Path(tmp), args.prefix)
        except RuntimeError as error:  # Mosquitto refused the config or did not start
            result = {"mosquitto_loaded_config": False, "error": str(error), "ok": False}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
