"""Raw paho-mqtt 2.x (MQTT v5) clients for broker tests: connect, publish and watch what is delivered."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

WAIT_S = 5.0


@dataclass
class Probe:
    """One connected client that records every message it is delivered and every PUBACK/SUBACK code."""

    client: mqtt.Client
    identity: str
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    puback: dict[int, int] = field(default_factory=dict)
    suback: dict[int, list[int]] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, topic: str, payload: bytes = b"{}", qos: int = 1, retain: bool = False) -> int:
        """Publishes and waits for the PUBACK; returns its reason code (0 = accepted, >= 0x80 refused)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        with self._changed:
            assert self._changed.wait_for(lambda: info.mid in self.puback, WAIT_S), f"no PUBACK for {topic}"
            return self.puback[info.mid]

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        """Subscribes and waits for the SUBACK; returns its reason codes."""
        result, mid = self.client.subscribe(topic_filter, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self._changed:
            assert self._changed.wait_for(lambda: mid in self.suback, WAIT_S), f"no SUBACK for {topic_filter}"
            return self.suback[mid]

    def wait_for_message(self, topic: str, timeout: float = WAIT_S) -> mqtt.MQTTMessage:
        with self._changed:
            found = self._changed.wait_for(lambda: any(m.topic == topic for m in self.messages), timeout)
        assert found, f"{self.identity} never received {topic}; got {self.topics()}"
        return next(m for m in self.messages if m.topic == topic)

    def topics(self) -> list[str]:
        with self._changed:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class ConnectOutcome:
    connected: bool
    detail: str


def _client(
    identity: str, ca_file: Path | None, cert: Path | None, key: Path | None, client_id: str | None = None
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{identity}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    if ca_file is not None:
        client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return client


def try_connect(
    host: str,
    port: int,
    ca_file: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    identity: str = "probe",
) -> ConnectOutcome:
    """Attempts one connection and reports whether the broker accepted it (CONNACK success)."""
    client = _client(identity, ca_file, cert, key)
    done = threading.Event()
    outcome: dict[str, Any] = {"connected": False, "detail": "no answer"}

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        outcome.update(connected=not rc.is_failure, detail=f"CONNACK {rc}")
        done.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        if not outcome["connected"]:
            outcome["detail"] = f"connection closed before CONNACK ({rc})"
        done.set()

    def on_connect_fail(_c: mqtt.Client, _u: object) -> None:
        outcome["detail"] = "connect failed"
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_connect_fail = on_connect_fail
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as error:
        return ConnectOutcome(False, f"{type(error).__name__}: {error}")
    # Driven by hand rather than loop_start(): paho's background loop would sleep a reconnect delay
    # after a refused handshake before it can be stopped.
    deadline = time.monotonic() + WAIT_S
    try:
        while not done.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
    except (OSError, ssl.SSLError) as error:
        outcome["detail"] = f"{type(error).__name__}: {error}"
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    return ConnectOutcome(bool(outcome["connected"]), str(outcome["detail"]))


def connect_probe(
    host: str,
    port: int,
    ca_file: Path,
    cert: Path,
    key: Path,
    identity: str,
    *,
    client_id: str | None = None,
    session_expiry_s: int = 0,
) -> Probe:
    """A connected client, or an AssertionError saying why the broker refused it. With session_expiry_s
    the session (subscriptions, queued QoS 1 messages) outlives the connection (clean_start=False)."""
    client = _client(identity, ca_file, cert, key, client_id)
    probe = Probe(client, identity)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        connected.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with probe._changed:
            probe.messages.append(message)
            probe._changed.notify_all()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        with probe._changed:
            probe.puback[mid] = rc.value
            probe._changed.notify_all()

    def on_subscribe(
        _c: mqtt.Client, _u: object, mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        with probe._changed:
            probe.suback[mid] = [code.value for code in codes]
            probe._changed.notify_all()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    client.connect(host, port, keepalive=10, clean_start=session_expiry_s == 0, properties=properties)
    client.loop_start()
    if not connected.wait(WAIT_S) or refused:
        probe.close()
        raise AssertionError(f"{identity} could not connect: {refused or 'timeout'}")
    return probe
