"""Reads a unit's retained ``status`` and ``health`` from the broker with a consumer identity.

The unit publishes both retained, so a consumer that subscribes gets the latest of each at once; this
waits until both arrived (or the timeout passed), validates them against their schemas and disconnects.
Used by ``device status``: an installer sees a unit's health without writing an MQTT script.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device.consumers.consumer import ConsumerSettings, tls_context
from device.events.payloads import PayloadError, decode

KINDS = ("status", "health")


@dataclass
class RetainedState:
    """The latest retained payload of each kind (absent: the unit never published it), and problems."""

    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    connected: bool = False


def read_retained(settings: ConsumerSettings, unit: str, timeout_s: float = 5.0) -> RetainedState:
    state = RetainedState()
    done = threading.Event()
    topics = {f"{settings.prefix}/{unit}/{kind}": kind for kind in KINDS}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            state.problems.append(f"the broker refused this consumer: {reason}")
            done.set()
            return
        state.connected = True
        client.subscribe([(topic, 1) for topic in topics])

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = topics.get(message.topic)
        if kind is None:
            return
        try:
            state.payloads[kind] = decode(kind, bytes(message.payload))  # type: ignore[arg-type]
        except PayloadError as error:
            state.problems.append(f"invalid {kind} payload on {message.topic}: {error}")
        if all(k in state.payloads for k in KINDS):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(settings))
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(settings.host, settings.port, keepalive=10)
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return state
