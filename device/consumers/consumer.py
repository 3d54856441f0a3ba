"""The consumer side of the event contract: subscribe, validate, deduplicate, hand over.

Used by ``device events tail`` and by the reliability tests. Delivery is at-least-once (QoS 1, and the
unit replays its outbox after every reconnect), so a consumer must deduplicate by ``event_id``; it also
refuses any payload that does not match the schema or whose ``unit`` differs from the topic it came on.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.events.payloads import PayloadError, decode
from device.events.signing import EventVerifier
from device.events.tls import client_tls_context

log = logging.getLogger(__name__)

DEDUP_MEMORY = 100_000


@dataclass(frozen=True)
class ConsumerSettings:
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    prefix: str = "entrance"
    unit: str = "+"
    # A fixed client id with a session expiry gives a persistent session: the broker queues events
    # while this consumer is away (and across a broker restart, with persistence on).
    client_id: str = ""
    session_expiry_s: int = 0
    keepalive_s: int = 30
    # MQTT v5 shared subscription (``$share/<group>/<filter>``): the broker hands each event to one
    # member of the group, so several instances split the load and the others carry on when one dies.
    share_group: str = ""


@dataclass
class ConsumerCounters:
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    callback_errors: int = 0
    problems: list[str] = field(default_factory=list)


class Deduper:
    """Remembers the last ``capacity`` event ids; ``first_time`` is True once per id."""

    def __init__(self, capacity: int = DEDUP_MEMORY) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def seen(self, event_id: str) -> bool:
        return event_id in self._seen

    def first_time(self, event_id: str) -> bool:
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


def check_event(topic: str, data: bytes) -> dict[str, Any]:
    """A received event, validated, whose ``unit`` matches the topic's unit level."""
    event = decode("event", data)
    parts = topic.split("/")
    if len(parts) < 3 or parts[-1] != "events" or parts[-2] != event["unit"]:
        raise PayloadError(f"event from unit {event['unit']!r} arrived on {topic!r}")
    return event


SHARE_GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_share_group(group: str) -> str:
    """A share group name: no topic separator or wildcard can reach the filter (``$share/<group>/...``)."""
    if not SHARE_GROUP_PATTERN.fullmatch(group):
        raise ValueError(f"share group {group!r}: use 1-64 letters, digits, '_' or '-'")
    return group


def events_filter(settings: ConsumerSettings) -> str:
    """``<prefix>/<unit>/events``, under ``$share/<group>/`` when the consumer shares a group."""
    plain = f"{settings.prefix}/{settings.unit}/events"
    if not settings.share_group:
        return plain
    return f"$share/{check_share_group(settings.share_group)}/{plain}"


def tls_context(settings: ConsumerSettings) -> ssl.SSLContext:
    """The project's one client context (``events.tls``): the same checks as the unit's publisher."""
    return client_tls_context(settings.ca_file, settings.cert_file, settings.key_file)


class EventConsumer:
    """Subscribes to events; ``on_event(event, topic)`` gets each new, valid event exactly once."""

    def __init__(
        self,
        settings: ConsumerSettings,
        on_event: Callable[[dict[str, Any], str], None],
        *,
        on_invalid: Callable[[str, str], None] | None = None,
        on_connection: Callable[[str], None] | None = None,
        verifier: EventVerifier | None = None,
    ) -> None:
        """``verifier``: check each new event's signature, unit, freshness and order (issue 13); without
        one, events are only schema-checked (tests of the transport, not a consumer to act on)."""
        self.settings = settings
        self.counters = ConsumerCounters()
        self.subscribed = threading.Event()
        self._on_event = on_event
        self._on_invalid = on_invalid
        self._on_connection = on_connection
        self._verifier = verifier
        self._was_connected = False
        self._online = False
        self._stopping = False
        self._dedup = Deduper()
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.tls_set_context(tls_context(settings))
        self._client.reconnect_delay_set(1, 4)
        self._client.on_connect = self._guarded(self._connected)
        self._client.on_disconnect = self._guarded(self._disconnected)
        self._client.on_subscribe = self._guarded(self._subscribed)
        self._client.on_message = self._guarded(self._message)

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Any exception in a callback (ours or the caller's handler) is logged and counted: paho would
        otherwise re-raise it from its network thread and end it, and the consumer would go deaf."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("consumer callback %s failed", getattr(callback, "__name__", callback))
                with self._lock:
                    self.counters.callback_errors += 1

        return guarded

    def _tell(self, what: str) -> None:
        if self._on_connection is not None:
            self._on_connection(what)

    @property
    def topic_filter(self) -> str:
        return events_filter(self.settings)

    def start(self) -> EventConsumer:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        persistent = bool(self.settings.client_id) and self.settings.session_expiry_s > 0
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=not persistent,
            properties=properties,
        )
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def _connected(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the consumer: %s", reason_code)
            self._tell(f"broker refused the connection: {reason_code}")
            return
        if self._was_connected:
            self._tell("reconnected")
        self._was_connected = self._online = True
        client.subscribe(self.topic_filter, qos=1)

    def _disconnected(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        online, self._online = self._online, False
        if online and not self._stopping:
            self._tell(f"connection lost ({reason_code})")

    def _subscribed(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if all(not code.is_failure for code in reason_codes):
            self.subscribed.set()
        else:
            log.error("subscription to %s refused: %s", self.topic_filter, reason_codes)

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            event = check_event(message.topic, bytes(message.payload))
        except PayloadError as error:
            with self._lock:
                self.counters.invalid += 1
                self.counters.problems.append(str(error)[:300])
            if self._on_invalid is not None:
                self._on_invalid(message.topic, str(error))
            return
        event_id = str(event["event_id"])
        with self._lock:
            duplicate = self._dedup.seen(event_id)
            if duplicate:
                # At-least-once delivery: a redelivery is expected, not an attack; it is checked by id
                # before the signature so that it is not reported as a replay.
                self.counters.received += 1
                self.counters.duplicates += 1
                return
            try:
                if self._verifier is not None:
                    self._verifier.verify(event)
            except PayloadError as error:
                self.counters.invalid += 1
                self.counters.problems.append(str(error)[:300])
                rejected: str | None = str(error)
            else:
                # Remembered only once verified: a forged event cannot burn a genuine event's id.
                self._dedup.first_time(event_id)
                self.counters.received += 1
                rejected = None
        if rejected is not None:
            if self._on_invalid is not None:
                self._on_invalid(message.topic, rejected)
            return
        self._on_event(event, message.topic)
