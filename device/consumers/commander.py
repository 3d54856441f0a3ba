"""Sending a signed command to a unit over MQTT and waiting for its answer (what a door controller,
keypad or operator does).

The sender connects with its own (consumer) certificate and subscribes to its answer topic,
``<prefix>/<unit>/answers/<its identity>`` (the certificate's CN: the broker ACL lets only that identity
read there). It publishes one QoS 1 command with that topic as the MQTT v5 response topic and fresh
correlation data, and waits for the broker's PUBACK, then for the unit's answer. A PUBACK says only that
the broker took the message; the answer says what the unit did, and counts only when ``check`` accepts it
(``signing.check_answer``: the unit's own signature, that unit, this request, now). Anything else that
arrives there, a forgery by whoever can publish on the topic, is set aside and the wait goes on.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.consumers.consumer import ConsumerSettings, tls_context
from device.errors import UserError
from device.events.payloads import IDENTITY_PATTERN, PayloadError, Topics

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
DEFAULT_ANSWER_TIMEOUT_S = 10.0

AnswerCheck = Callable[[bytes], dict[str, Any]]
"""Returns the verified answer, or raises ``PayloadError`` for one that does not count."""


class CommandSendError(UserError):
    """The broker did not take the command (connection refused, not authorised, no answer)."""


@dataclass(frozen=True)
class SentCommand:
    topic: str
    reason_code: int  # the broker's PUBACK reason (0 = accepted; 0x10 = no subscriber, still accepted)
    answer: dict[str, Any] | None  # the unit's verified answer; None when none came in time
    set_aside: list[str] = field(default_factory=list)  # why each answer that did not count was refused

    @property
    def applied(self) -> bool:
        return self.answer is not None and self.answer["outcome"] == "applied"

    def line(self, timeout_s: float) -> str:
        """``applied``, ``refused: <reason>`` or ``no answer within N s``: what ``command send`` prints."""
        if self.answer is None:
            return f"no answer within {timeout_s:g} s"
        if self.answer["outcome"] == "applied":
            return "applied"
        return f"refused: {self.answer['reason']}"


def broker_identity(cert_file: Path) -> str:
    """The MQTT identity of a client certificate: its CN (the broker's ``use_identity_as_username``)."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as error:
        raise CommandSendError(f"cannot read the certificate {cert_file}: {error}") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    identity = str(names[0].value) if names else ""
    if not IDENTITY_PATTERN.fullmatch(identity):
        raise CommandSendError(f"the certificate {cert_file} names no usable identity (CN {identity!r})")
    return identity


def send_command(
    settings: ConsumerSettings,
    unit: str,
    name: str,
    payload: bytes,
    *,
    check: AnswerCheck,
    answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
) -> SentCommand:
    """Publishes ``payload`` on ``<prefix>/<unit>/cmd/<name>`` (QoS 1, never retained) asking for an
    answer, and waits up to ``answer_timeout_s`` after the PUBACK for one that ``check`` accepts."""
    topics = Topics(settings.prefix, unit)
    topic, answer_topic = topics.cmd(name), topics.answers(broker_identity(settings.cert_file))
    correlation = secrets.token_bytes(16)
    connected, subscribed, answered = threading.Event(), threading.Event(), threading.Event()
    refused: list[str] = []
    granted: list[bool] = []
    acked: dict[int, int] = {}
    arrived: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(settings))

    def on_connect(_c: mqtt.Client, _u: object, _f: object, code: ReasonCode, _p: object) -> None:
        if code.is_failure:
            refused.append(str(code))
        connected.set()

    def on_subscribe(_c: mqtt.Client, _u: object, _m: int, codes: list[ReasonCode], _p: object) -> None:
        granted.append(not any(code.is_failure for code in codes))
        subscribed.set()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, code: ReasonCode, _p: object) -> None:
        acked[mid] = code.value
        answered.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        # Correlation data is not signed: it only picks this request's answers out of the topic; the
        # signed request id inside is what ``check`` holds the answer to.
        if (
            message.topic == answer_topic
            and getattr(message.properties, "CorrelationData", None) == correlation
        ):
            arrived.put(bytes(message.payload))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        if not connected.wait(PUBLISH_TIMEOUT_S) or refused:
            raise CommandSendError(f"broker refused the connection: {refused[0] if refused else 'no answer'}")
        client.subscribe(answer_topic, qos=1)
        if not subscribed.wait(PUBLISH_TIMEOUT_S) or not all(granted):
            raise CommandSendError(f"the broker did not grant the answer subscription {answer_topic}")
        request = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        request.ResponseTopic = answer_topic
        request.CorrelationData = correlation
        info = client.publish(topic, payload, qos=1, retain=False, properties=request)
        if not answered.wait(PUBLISH_TIMEOUT_S) or info.mid not in acked:
            raise CommandSendError(f"no PUBACK for {topic} within {PUBLISH_TIMEOUT_S:.0f} s")
        code = acked[info.mid]
        if code >= 0x80:
            raise CommandSendError(
                f"the broker refused {topic} (0x{code:02x}): not allowed for this certificate"
            )
        answer, set_aside = _first_valid_answer(arrived, check, time.monotonic() + answer_timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return SentCommand(topic, code, answer, set_aside)


def _first_valid_answer(
    arrived: queue.Queue[bytes], check: AnswerCheck, deadline: float
) -> tuple[dict[str, Any] | None, list[str]]:
    set_aside: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            data = arrived.get(timeout=remaining)
        except queue.Empty:
            break
        try:
            return check(data), set_aside
        except PayloadError as error:
            log.warning("set aside an answer that does not count: %s", error)
            set_aside.append(str(error))
    return None, set_aside
