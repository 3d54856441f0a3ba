"""Sending a signed command to a unit over MQTT (what a door controller, keypad or operator does).

The sender connects with its own (consumer) certificate, publishes one QoS 1 command that its
commander key signed, and waits for the broker's PUBACK. The unit decides by itself whether to act on it
(``device.events.signing.CommandVerifier``): a PUBACK says only that the broker took the message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from device.consumers.consumer import ConsumerSettings, tls_context
from device.errors import UserError
from device.events.payloads import Topics

PUBLISH_TIMEOUT_S = 10.0


class CommandSendError(UserError):
    """The broker did not take the command (connection refused, not authorised, no answer)."""


@dataclass(frozen=True)
class SentCommand:
    topic: str
    reason_code: int  # the broker's PUBACK reason (0 = accepted; 0x10 = no subscriber, still accepted)


def send_command(settings: ConsumerSettings, unit: str, name: str, payload: bytes) -> SentCommand:
    """Publishes ``payload`` on ``<prefix>/<unit>/cmd/<name>`` (QoS 1, never retained)."""
    topic = Topics(settings.prefix, unit).cmd(name)
    connected = threading.Event()
    refused: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(settings))

    def on_connect(_c: mqtt.Client, _u: object, _f: object, code: ReasonCode, _p: object) -> None:
        if code.is_failure:
            refused.append(str(code))
        connected.set()

    acked: dict[int, int] = {}
    answered = threading.Event()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, code: ReasonCode, _p: object) -> None:
        acked[mid] = code.value
        answered.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        if not connected.wait(PUBLISH_TIMEOUT_S) or refused:
            raise CommandSendError(f"broker refused the connection: {refused[0] if refused else 'no answer'}")
        info = client.publish(topic, payload, qos=1, retain=False)
        if not answered.wait(PUBLISH_TIMEOUT_S) or info.mid not in acked:
            raise CommandSendError(f"no PUBACK for {topic} within {PUBLISH_TIMEOUT_S:.0f} s")
        code = acked[info.mid]
        if code >= 0x80:
            raise CommandSendError(
                f"the broker refused {topic} (0x{code:02x}): not allowed for this certificate"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return SentCommand(topic, code)
