"""The consumer side of the event contract: subscribe, validate, deduplicate, hand over.

Used by ``device events tail`` and by the reliability tests. Delivery is at-least-once (QoS 1, and the
unit replays its outbox after every reconnect), so a consumer must deduplicate by ``event_id``; it also
refuses any payload that does not match the schema or whose ``unit`` differs from the topic it came on.

A consumer is never silently deaf: it counts as subscribed only once the broker granted the
subscription (SUBACK) and delivered the consumer's own access probe back to it. Mosquitto's ACL file
grants every SUBSCRIBE and filters at delivery, so a certificate the ACL does not list as a consumer
(a unit's, say) would otherwise "listen" and receive nothing; the probe turns that into a refusal
(PUBACK 0x87) the consumer can name. ``failure`` says why it cannot listen; ``subscribed`` is cleared
while the connection is down.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import uuid
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
from device.events.tls import certificate_common_name, client_tls_context

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
    # A service (the door) announces itself: ``online`` retained on its status topic once it listens,
    # ``offline`` on a clean stop and as its last will when it dies or loses the broker.
    announce_status: bool = False


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


CONSUMERS_LEVEL = "consumers"


def consumer_topic(prefix: str, identity: str, leaf: str) -> str:
    """``<prefix>/consumers/<identity>/<leaf>``: a consumer identity's own topics in the broker's ACL
    (deploy/broker/render.py): ``probe`` (read and write) and ``status`` (write, retained)."""
    return f"{prefix}/{CONSUMERS_LEVEL}/{identity}/{leaf}"


def probe_topic(settings: ConsumerSettings, identity: str) -> str | None:
    """Where this consumer proves the broker delivers to it; None when it cannot: no CN to name it,
    or a prefix with wildcards (the central broker of many buildings, whose ACL has no consumer corner)."""
    if not identity or "+" in settings.prefix or "#" in settings.prefix:
        return None
    return consumer_topic(settings.prefix, identity, "probe")


STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
STATUS_STOP_WAIT_S = 2.0


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
        one, events are only schema-checked (tests of the transport, not a consumer to act on).
        ``on_connection(line)``: the connection lost, back, or refused, in one line each."""
        self.settings = settings
        self.counters = ConsumerCounters()
        # Set while the subscription is confirmed (granted, and the probe came back); cleared when the
        # connection drops. ``failure``: why this consumer cannot listen (set once, never cleared).
        self.subscribed = threading.Event()
        self.failure: str | None = None
        self._settled = threading.Event()
        self.identity = certificate_common_name(settings.cert_file)
        self.probe_topic = probe_topic(settings, self.identity)
        self.status_topic = (
            consumer_topic(settings.prefix, self.identity, "status")
            if settings.announce_status and self.probe_topic is not None
            else None
        )
        self._on_event = on_event
        self._on_invalid = on_invalid
        self._on_connection = on_connection
        self._verifier = verifier
        self._online = False
        self._stopping = False
        self._dedup = Deduper()
        self._lock = threading.Lock()
        # Per connection: what must still happen before it counts as subscribed.
        self._awaiting: set[str] = set()
        self._subscription_mids: dict[int, str] = {}
        self._probe_mid: int | None = None
        self._probe_nonce = b""
        self._status_mid: int | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.tls_set_context(tls_context(settings))
        self._client.reconnect_delay_set(1, 4)
        if self.status_topic is not None:
            # Sent by the broker when this consumer dies or drops off (keepalive), not on a clean stop.
            self._client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._guarded(self._connected)
        self._client.on_disconnect = self._guarded(self._disconnected)
        self._client.on_subscribe = self._guarded(self._subscribed)
        self._client.on_publish = self._guarded(self._published)
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

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def start(self) -> EventConsumer:
        """Connects now (TCP and TLS; a refused port, an unknown host or a certificate problem raises
        ``OSError``/``ssl.SSLError`` here) and keeps the connection up in paho's thread from then on."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        persistent = bool(self.settings.client_id) and self.settings.session_expiry_s > 0
        self._client.connect(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=not persistent,
            properties=properties,
        )
        self._client.loop_start()
        return self

    def wait_settled(self, timeout_s: float) -> bool:
        """Waits until this consumer is subscribed or has failed; False when neither within ``timeout_s``."""
        return self._settled.wait(timeout_s)

    def stop(self) -> None:
        self._stopping = True
        self.subscribed.clear()
        if self.status_topic is not None and self._online:
            # A clean DISCONNECT discards the will, so the service says ``offline`` itself.
            info = self._client.publish(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(STATUS_STOP_WAIT_S)
            except (RuntimeError, ValueError) as error:
                log.warning("could not publish offline on %s: %s", self.status_topic, error)
        self._client.disconnect()
        self._client.loop_stop()

    def _fail(self, why: str) -> None:
        """This consumer cannot listen: kept (the first reason wins) for the command to report."""
        log.info("consumer cannot listen: %s", why)  # the command says it, once, on stderr
        self.subscribed.clear()
        if self.failure is None:
            self.failure = why
        self._settled.set()

    def _step_done(self, step: str) -> None:
        self._awaiting.discard(step)
        if not self._awaiting and self._online and not self.subscribed.is_set():
            if self._settled.is_set() and self.failure is None:
                self._tell(f"reconnected to {self.where}; listening again on {self.topic_filter}")
            self.subscribed.set()
            self._settled.set()
            if self.status_topic is not None:
                self._status_mid = self._client.publish(
                    self.status_topic, STATUS_ONLINE, qos=1, retain=True
                ).mid

    def _connected(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._fail(f"the broker at {self.where} refused the connection ({reason_code})")
            return
        self._online = True
        self._awaiting = {"events"}
        self._subscription_mids = {}
        _, mid = client.subscribe(self.topic_filter, qos=1)
        self._subscription_mids[int(mid or 0)] = "events"
        if self.probe_topic is not None:
            self._awaiting.add("probe")
            _, mid = client.subscribe(self.probe_topic, qos=1)
            self._subscription_mids[int(mid or 0)] = "probe"
            # Sent after the SUBSCRIBE on the same connection, so the broker handles it after it: the
            # probe comes back only if the broker delivers to this identity at all.
            self._probe_nonce = uuid.uuid4().hex.encode()
            self._probe_mid = client.publish(self.probe_topic, self._probe_nonce, qos=1).mid

    def _disconnected(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        online, self._online = self._online, False
        confirmed = self.subscribed.is_set()
        self.subscribed.clear()
        if self._stopping:
            return
        if not self._settled.is_set():
            # Before the first confirmed subscription: a broker that hangs up now (a certificate it
            # refuses, a CONNACK refusal) will hang up again; waiting would only look like listening.
            self._fail(f"the broker at {self.where} closed the connection ({reason_code})")
        elif online or confirmed:
            self._tell(f"connection lost to {self.where} ({reason_code}); reconnecting")

    def _subscribed(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        step = self._subscription_mids.pop(mid, None)
        if step is None:
            return
        refused = [code for code in reason_codes if code.is_failure]
        topic = self.topic_filter if step == "events" else self.probe_topic
        if refused:
            self._fail(
                f"the broker at {self.where} refused the subscription to {topic} ({refused[0]}) for "
                f"{self._identity_text()}"
            )
            return
        if step == "events":
            self._step_done(step)  # the probe's own step ends when the probe comes back

    def _published(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            return
        if mid == self._status_mid:
            self._fail(
                f"the broker at {self.where} refused {self._identity_text()} its status topic "
                f"{self.status_topic} ({reason_code}); render the broker ACL again (deploy/broker/render.py)"
            )
            return
        if mid != self._probe_mid:
            return
        self._fail(
            f"the broker at {self.where} does not let {self._identity_text()} act as a consumer: its access "
            f"probe to {self.probe_topic} was refused ({reason_code}); use a consumer certificate (a unit's "
            "own certificate may not read events), or add this identity to the broker's consumers"
        )

    def _identity_text(self) -> str:
        return f"certificate {self.settings.cert_file} (CN {self.identity!r})"

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.probe_topic:
            if bytes(message.payload) == self._probe_nonce:
                self._step_done("probe")
            return
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
