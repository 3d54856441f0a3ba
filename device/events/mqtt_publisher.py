"""The unit's MQTT client: implements ``device.events.publish.Publisher`` over the durable outbox.

One I/O thread owns the connection. The pipeline thread only commits events to the outbox and wakes it.
The I/O thread:

- connects (TLS with CA and client certificate, hostname checked; MQTT v5; ``clean_start=False`` with
  a session expiry so the broker keeps the cmd subscription and queues commands while we are away);
  registers the Will (status ``offline``, retained) and says ``online`` once connected;
- publishes outbox rows in ``seq`` order with QoS 1, a bounded window in flight, and deletes a row only
  when its PUBACK carries a reason code below 0x80. paho's ``wait_for_publish()`` reports success even
  for a refusal, so the reason code is read in ``on_publish``;
- on a refusal (e.g. 0x87 not authorised) keeps the event, raises an alarm in health and holds the
  outbox for a growing delay instead of resending in a tight loop;
- after any disconnect builds a fresh client after a jittered exponential backoff and replays the whole
  outbox from the oldest row. A fresh client per connection means paho never retransmits on its own
  behind our back: the outbox is the only source of what is (re)sent, so order is always ``seq`` order.
  Consumers deduplicate the at-least-once redeliveries by ``event_id``;
- publishes retained health every ``health_interval_s``; hands each command message to the command gate
  (``command_gate``: parse, verify, use once, dispatch through the handler table given at construction)
  and answers it (MQTT v5 request/response): ``applied``, or ``refused`` with the reason, signed with the
  event key, on the command's response topic with its correlation data. Answers go out at once, not
  through the outbox: they matter only while the sender waits. The response topic must be one of this
  unit's answer topics (``<prefix>/<unit>/answers/<identity>``, readable only by that identity); a
  command without one gets no answer (its refusal is logged), so no command can make the unit write
  anywhere else.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device import __version__
from device.atomicio import InputFileError, read_capped
from device.config import MqttSection, UnitConfig
from device.errors import UserError, shown
from device.events.clock import ClockProbe, always_synchronised, kernel_clock_synchronised
from device.events.command_gate import CommandGate, CommandHandler, RejectionLog, UsedRequests, Verdict
from device.events.connect_errors import explain_connect_error, explain_refusal
from device.events.forgotten import FORGOTTEN_TYPE
from device.events.ha_discovery import discovery_configs, forget_last_seen, last_seen_configs
from device.events.outbox import Outbox
from device.events.payloads import (
    Command,
    HealthParts,
    PayloadError,
    Topics,
    build_answer,
    build_event,
    build_health,
    build_status,
    encode,
    utc_timestamp,
)
from device.events.signing import CommandVerifier, unit_event_key
from device.events.tls import TlsSetupError, client_tls_context
from device.layout import StateLayout
from device.types import Decision, DecisionType

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 20
LOOP_TIMEOUT_S = 0.02
BACKOFF_BASE_S = 0.5
# Refusals (ACL, quota) need an operator, not a quick retry: hold the outbox 1-2 s, then longer, to 60 s.
REFUSAL_BACKOFF = (2.0, 60.0)
SHUTDOWN_DRAIN_S = 3.0
# The I/O loop turns at least every 0.2 s; a TLS connect may block for paho's connect timeout (5 s) and a
# reload command runs in this thread too. Silence far beyond that means a hung thread: stop the watchdog.
IO_STALL_S = 60.0
HA_PREFIX = "homeassistant"
NOT_AUTHORIZED = 0x87  # MQTT v5 reason code: the broker's ACL refused this topic for this identity
# MQTT v5 correlation data is the sender's to choose; anything longer than this is not a request id.
MAX_CORRELATION_BYTES = 128


MAX_PASSWORD_FILE_BYTES = 4096


class MqttSetupError(UserError):
    """The MQTT settings cannot work (missing TLS files, unreadable password file)."""


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: attempt n waits a random time in [d/2, d], d = min(cap, base * 2^n).

    The jitter keeps a fleet of units from reconnecting in lock-step after a broker restart.
    """

    base_s: float
    cap_s: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 30)))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass
class _Counters:
    reconnects: int = 0
    refused: int = 0
    last_refusal: str | None = None
    commands_accepted: int = 0
    commands_rejected: int = 0
    invalid_events: int = 0
    callback_errors: int = 0
    alarms: dict[str, str] = field(default_factory=dict)


def tls_context(settings: MqttSection) -> ssl.SSLContext:
    """The project's one client context (``events.tls``) from the ``[mqtt.tls]`` files."""
    tls = settings.tls
    try:
        return client_tls_context(tls.ca_file, tls.cert_file, tls.key_file)
    except TlsSetupError as error:
        raise MqttSetupError(f"mqtt.tls: {error}") from error


def _read_password(path: Path) -> str:
    try:
        data = read_capped(path, MAX_PASSWORD_FILE_BYTES, "mqtt.password_file")
    except OSError as error:
        raise MqttSetupError(f"cannot read mqtt.password_file {path}: {error.strerror}") from error
    except InputFileError as error:
        raise MqttSetupError(str(error)) from error
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise MqttSetupError(f"mqtt.password_file {path} is not UTF-8 text") from None


class MqttPublisher:
    """``Publisher`` for the unit: ``start()`` runs the I/O thread; ``close()`` ends cleanly.

    ``commands`` maps a command name to its handler (``command_gate.command_table``); ``health`` is the
    publisher's own. ``models`` and ``gallery_version`` name what decided, in every event.
    """

    def __init__(
        self,
        config: UnitConfig,
        *,
        commands: Mapping[str, CommandHandler] | None = None,
        models: Mapping[str, str] | None = None,
        gallery_version: Callable[[], str | None] | None = None,
        rng: random.Random | None = None,
        clock_synchronised: ClockProbe | None = None,
    ) -> None:
        self._settings = config.mqtt
        self._clock_checked = clock_synchronised is not None or self._settings.clock_check == "kernel"
        self._clock_synchronised = clock_synchronised or (
            kernel_clock_synchronised if self._settings.clock_check == "kernel" else always_synchronised
        )
        self._unit = config.unit.id
        self._topics = Topics(self._settings.topic_prefix, self._unit)
        self._model_names = {"detector": config.models.detector, "embedder": config.models.embedder}
        self._models = dict(models or self._model_names)
        self._gallery_version = gallery_version or (lambda: None)
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._backoff = Backoff(BACKOFF_BASE_S, self._settings.reconnect_backoff_max_s)
        self._refusal_backoff = Backoff(*REFUSAL_BACKOFF)
        self._tls = tls_context(self._settings)
        self._password = (
            _read_password(self._settings.password_file) if self._settings.password_file is not None else None
        )
        self._session = secrets.token_hex(8)
        try:
            self._event_key = unit_event_key(StateLayout.from_config(config))
        except (PayloadError, OSError) as error:
            raise MqttSetupError(f"event signing key: {error}") from error
        try:
            verifier = CommandVerifier.from_config(self._settings.command_keys)
        except (PayloadError, InputFileError) as error:
            raise MqttSetupError(f"mqtt.command_keys: {error}") from error
        handlers = {**(commands or {}), "health": self._health_command}
        try:
            used = UsedRequests(StateLayout.from_config(config).used_commands)
        except PayloadError as error:
            raise MqttSetupError(str(error)) from error
        self._commands = CommandGate(
            self._topics, verifier, handlers, used=used, clock_synchronised=self._clock_synchronised
        )
        if not self._commands.trusts_anyone:
            log.info("no trusted commanders (mqtt.command_keys): this unit refuses every command")
        self._outbox = Outbox(
            self._settings.outbox_path,
            max_rows=self._settings.outbox_max_rows,
            max_bytes=self._settings.outbox_max_bytes,
        )
        self._started = time.monotonic()
        self._lock = threading.Lock()  # guards the counters and the pipeline's health report
        self._counters = _Counters()
        self._rejections = RejectionLog(
            log, burst=self._settings.rejected_log_burst, interval_s=self._settings.rejected_log_interval_s
        )
        self._pipeline_health: dict[str, Any] = {}
        # Opt-in "last seen" (subject id -> when), and subjects forgotten since: sent by the I/O thread.
        self._last_seen: dict[str, str] = {}
        self._last_seen_cleared: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._health_now = threading.Event()
        # Set when the broker has granted the command subscription (SUBACK), cleared on disconnect: a
        # command sent before that may be lost, so callers and tests wait on this, not on "connected".
        self.subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self._thread: threading.Thread | None = None
        self._heartbeat = time.monotonic()  # written by the I/O thread each turn; read by io_alive
        # I/O thread state (touched only there).
        self._client: mqtt.Client | None = None
        self._connected = False
        self._attempt = 0
        self._next_attempt = 0.0
        self._cursor = 0  # highest seq handed to the client on this connection
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._control_mids: set[int] = set()
        self._hold_until = 0.0
        self._refusal_streak = 0
        self._next_health = 0.0
        self._last_problem: str | None = None  # said once at ERROR with its fix; repeats go to DEBUG

    # -- Publisher protocol ---------------------------------------------------------------------------

    def publish_decision(self, decision: Decision) -> None:
        """Commits the decision's event to the outbox (durable once this returns) and wakes the sender."""
        models, gallery = dict(self._models), self._gallery_version()

        def build(seq: int) -> tuple[str, bytes]:
            event = build_event(
                decision,
                seq=seq,
                unit=self._unit,
                models=models,
                gallery_version=gallery,
                unknown_scores=self._settings.unknown_scores,
            )
            return str(event["event_id"]), encode("event", self._event_key.sign(event))

        try:
            self._outbox.append(self._topics.events, build)
        except PayloadError as error:
            # A bug, not a condition to retry: keep the unit running and make it visible in health.
            log.error("event for track %d not emitted: %s", decision.track_id, error)
            with self._lock:
                self._counters.invalid_events += 1
                self._counters.alarms["event_invalid"] = str(error)[:200]
            return
        if self._announces_last_seen() and decision.type is DecisionType.RECOGNIZED and decision.subject_id:
            with self._lock:
                self._last_seen[decision.subject_id] = utc_timestamp()
        self._wake.set()

    def _announces_last_seen(self) -> bool:
        return self._settings.ha_discovery and self._settings.ha_last_seen

    def publish_health(self, health: Mapping[str, Any]) -> None:
        """Records the pipeline's latest health report; it goes out with the next periodic health, the
        first one at once (until then Home Assistant's accelerator sensors would read "unknown")."""
        with self._lock:
            first = not self._pipeline_health
            self._pipeline_health = dict(health)
        if first:
            self._health_now.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=SHUTDOWN_DRAIN_S + 10)
            self._thread = None
        self._outbox.close()

    # -- extras for the run loop ----------------------------------------------------------------------

    def start(self) -> MqttPublisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
            self._thread.start()
        return self

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def health_snapshot(self) -> dict[str, Any]:
        synchronised = self._clock_synchronised()
        with self._lock:
            counters = self._counters
            alarms = sorted(
                {
                    *counters.alarms,
                    *(["outbox_dropped"] if self._outbox_dropped() else []),
                    *([] if self._connected else ["broker_disconnected"]),
                    *([] if synchronised else ["clock_unsynchronised"]),
                }
            )
            parts = HealthParts(
                unit=self._unit,
                uptime_s=time.monotonic() - self._started,
                outbox=self._outbox.stats().as_health(),
                mqtt={
                    "connected": self._connected,
                    "reconnects": counters.reconnects,
                    "refused": counters.refused,
                    "last_refusal": counters.last_refusal,
                },
                commands={
                    "accepted": counters.commands_accepted,
                    "rejected": counters.commands_rejected,
                    "rejected_unlogged": self._rejections.unlogged,
                },
                alarms=alarms,
                clock_synchronised=synchronised if self._clock_checked else None,
            )
            pipeline = dict(self._pipeline_health)
        health, problems = build_health(parts, pipeline, presence=self._settings.health_presence)
        for problem in problems:
            log.warning("health: %s", problem)
        return health

    def io_alive(self, stall_s: float = IO_STALL_S) -> bool:
        """True while the I/O thread runs and has turned its loop within ``stall_s``.

        Part of the systemd watchdog ping (``SystemdNotifier.watch``): a dead or hung I/O thread means
        the outbox only grows and commands go unread, so the unit must be restarted, not stay silent.
        """
        thread = self._thread
        return thread is not None and thread.is_alive() and time.monotonic() - self._heartbeat < stall_s

    def _outbox_dropped(self) -> bool:
        return self._outbox.stats().dropped > 0

    # -- the I/O thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._heartbeat = now
                if self._client is None and now >= self._next_attempt:
                    self._connect()
                if self._client is not None:
                    self._step()
                else:
                    self._wake.wait(min(0.2, max(0.0, self._next_attempt - time.monotonic())))
                    self._wake.clear()
            self._shutdown()
        except Exception:
            log.exception("MQTT I/O thread failed")
            raise

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"entrance-{self._unit}",
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        client.tls_set_context(self._tls)
        if self._settings.username is not None:
            client.username_pw_set(self._settings.username, self._password)
        client.max_inflight_messages_set(INFLIGHT_WINDOW)
        client.max_queued_messages_set(0)
        will = encode("status", build_status(self._unit, "offline", "connection_lost", self._session))
        client.will_set(self._topics.status, will, qos=1, retain=True)
        client.on_connect = self._guarded(self._on_connect)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_publish = self._guarded(self._on_publish)
        client.on_message = self._guarded(self._on_message)
        client.on_subscribe = self._guarded(self._on_subscribe)
        return client

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """The callback, with any exception logged and counted instead of unwinding ``client.loop``.

        paho re-raises a callback's exception out of ``loop()``, which would end the I/O thread; one
        bad message or one bug in a handler must cost that message, not the unit's connection.
        """

        @wraps(callback)
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:
                log.exception("MQTT callback %s failed", callback.__name__)
                with self._lock:
                    self._counters.callback_errors += 1
                    self._counters.alarms["mqtt_callback_failed"] = f"{callback.__name__}: {error!r}"[:200]

        return guarded

    def _connect(self) -> None:
        client = self._new_client()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        try:
            client.connect(
                self._settings.host,
                self._settings.port,
                keepalive=self._settings.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except (OSError, ssl.SSLError, ValueError) as error:
            detail, fix = explain_connect_error(error, self._settings)
            self._report_problem(detail, fix)
            self._schedule_reconnect(f"connect failed: {detail}")
            return
        self._client = client

    def _report_problem(self, detail: str, fix: str, *, alarm: str | None = "broker_connection") -> None:
        """One clear ERROR (host, port, file, fix) per distinct problem, not one WARNING per retry."""
        if alarm is not None:
            with self._lock:
                self._counters.alarms[alarm] = detail[:160]
        if detail != self._last_problem:
            self._last_problem = detail
            log.error("MQTT: %s. Fix: %s. (Retrying in the background; events stay queued.)", detail, fix)

    def _schedule_reconnect(self, why: str) -> None:
        delay = self._backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        self._next_attempt = time.monotonic() + delay
        repeated = self._last_problem is not None and self._last_problem in why
        (log.debug if repeated else log.warning)("MQTT %s; retrying in %.1f s", why, delay)

    def _step(self) -> None:
        client = self._client
        assert client is not None
        rc = client.loop(timeout=LOOP_TIMEOUT_S)
        self._outbox.erase_acknowledged()  # the events this read acknowledged leave no copy on disk
        if rc != mqtt.MQTT_ERR_SUCCESS and self._client is not None:
            self._drop_connection(f"connection lost ({mqtt.error_string(rc)})")
            return
        if not self._connected:
            return
        self._pump()
        with self._lock:
            self._rejections.tick()
        self._publish_last_seen()
        now = time.monotonic()
        if self._health_now.is_set() or now >= self._next_health:
            self._health_now.clear()
            self._next_health = now + self._settings.health_interval_s
            self._publish_control(self._topics.health, encode("health", self.health_snapshot()))

    def _drop_connection(self, why: str) -> None:
        client, self._client = self._client, None
        was_connected, self._connected = self._connected, False
        self.subscribed.clear()
        self._inflight.clear()
        self._control_mids.clear()
        self._cursor = 0
        if client is not None:
            try:
                client.disconnect()
            except (OSError, ValueError) as error:
                log.debug("closing a dead connection: %s", error)
        if was_connected:
            with self._lock:
                self._counters.reconnects += 1
        self._schedule_reconnect(why)

    def _pump(self) -> None:
        """Hands outbox rows to the client in seq order while the window has room."""
        if time.monotonic() < self._hold_until or self._client is None:
            return
        room = INFLIGHT_WINDOW - len(self._inflight)
        if room <= 0:
            return
        for entry in self._outbox.pending(after_seq=self._cursor, limit=room):
            info = self._client.publish(entry.topic, entry.payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection is going away; the next connection replays from the outbox
            self._inflight[info.mid] = entry.seq
            self._cursor = entry.seq
            if self._settings.ha_discovery and FORGOTTEN_TYPE.encode() in entry.payload:
                self._forget_last_seen(entry.payload)

    def _forget_last_seen(self, payload: bytes) -> None:
        """A forgotten subject's "last seen" leaves the broker with it, whether or not the opt-in is
        still on (it may have been on when the subject was last recognised)."""
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if event.get("type") == FORGOTTEN_TYPE and isinstance(event.get("subject"), str):
            with self._lock:
                self._last_seen.pop(event["subject"], None)
                self._last_seen_cleared.append(event["subject"])

    def _publish_last_seen(self) -> None:
        with self._lock:
            seen, self._last_seen = self._last_seen, {}
            cleared, self._last_seen_cleared = self._last_seen_cleared, []
        for subject_id, seen_at in seen.items():
            try:
                messages = last_seen_configs(self._topics, self._unit, subject_id, seen_at, __version__)
            except ValueError as error:
                log.warning("last seen not announced: %s", error)
                continue
            for topic, payload in messages.items():
                self._publish_control(topic, payload)
        for subject_id in cleared:
            for topic, payload in forget_last_seen(self._unit, subject_id).items():
                self._publish_control(topic, payload)

    def _publish_control(self, topic: str, payload: bytes) -> None:
        if self._client is None:
            return
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._control_mids.add(info.mid)

    # -- paho callbacks (run in the I/O thread, inside client.loop) -----------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._counters.alarms["broker_refused_connection"] = str(reason_code)
            self._report_problem(*explain_refusal(str(reason_code), self._settings, self._unit), alarm=None)
            self._drop_connection(f"broker refused the connection: {reason_code}")
            return
        with self._lock:
            self._counters.alarms.pop("broker_refused_connection", None)
            self._counters.alarms.pop("broker_connection", None)
        self._last_problem = None
        self._connected = True
        self._attempt = 0
        self._cursor = 0
        self._hold_until = 0.0
        log.info(
            "MQTT connected to %s:%d (session present: %s)",
            self._settings.host,
            self._settings.port,
            flags.session_present,
        )
        self._publish_control(
            self._topics.status,
            encode("status", build_status(self._unit, "online", "connected", self._session)),
        )
        _, self._subscribe_mid = client.subscribe(self._topics.cmd_filter, qos=1)
        if self._settings.ha_discovery:
            for topic, config in discovery_configs(
                self._topics, self._unit, self._model_names, __version__
            ).items():
                payload = b"" if config is None else json.dumps(config, sort_keys=True).encode()
                self._publish_control(topic, payload)
        self._next_health = 0.0

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            # The ACL does not let this identity read its own cmd topics: commands cannot arrive.
            with self._lock:
                self._counters.alarms["command_subscription_refused"] = str(refused[0])
            log.error("broker refused the command subscription %s: %s", self._topics.cmd_filter, refused[0])
            return
        with self._lock:
            self._counters.alarms.pop("command_subscription_refused", None)
        self.subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._client is client and not self._stop.is_set():
            self._drop_connection(f"disconnected ({reason_code})")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        seq = self._inflight.pop(mid, None)
        control = mid in self._control_mids
        self._control_mids.discard(mid)
        if reason_code.value < 0x80:
            if seq is not None:
                self._outbox.ack(seq, erase_now=False)  # erased in _step, once for this read's acks
                self._refusal_streak = 0
                with self._lock:
                    self._counters.alarms.pop("publish_refused", None)
            return
        what = f"seq {seq}" if seq is not None else ("status/health/answer" if control else f"mid {mid}")
        log.error("broker refused publish of %s: %s (0x%02x)", what, reason_code, reason_code.value)
        if reason_code.value == NOT_AUTHORIZED:
            self._report_problem(*explain_refusal(str(reason_code), self._settings, self._unit), alarm=None)
        with self._lock:
            self._counters.refused += 1
            self._counters.last_refusal = f"0x{reason_code.value:02x} {reason_code}"[:80]
            self._counters.alarms["publish_refused"] = self._counters.last_refusal
        if seq is not None:
            # Keep the event; hold the outbox and retry later from the oldest row. Refusals usually
            # mean a broker ACL or quota problem that only an operator fixes, so back off hard.
            delay = self._refusal_backoff.delay(self._refusal_streak, self._rng)
            self._refusal_streak += 1
            self._hold_until = time.monotonic() + delay
            self._cursor = min(self._cursor, seq - 1)
            self._inflight = {m: s for m, s in self._inflight.items() if s < seq}

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        verdict = self._commands.decide(message.topic, bytes(message.payload), retained=message.retain)
        with self._lock:
            if verdict.applied:
                self._counters.commands_accepted += 1
            else:
                self._counters.commands_rejected += 1
                # rate-limited and escaped: any consumer certificate can send junk here
                self._rejections.rejected(
                    message.topic, len(message.payload), f"{verdict.refusal}: {verdict.detail}"
                )
        self._answer(client, message, verdict)

    def _answer(self, client: mqtt.Client, message: mqtt.MQTTMessage, verdict: Verdict) -> None:
        """Publishes the signed answer on the command's response topic, if it gave a usable one."""
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        if response_topic is None:
            log.debug("command on %s asked for no answer (no response topic)", shown(message.topic))
            return
        if self._topics.answer_reader(str(response_topic)) is None:
            if not verdict.applied:
                return  # its refusal is logged (rate-limited); a junk response topic adds nothing
            log.warning(
                "command on %s asked for its answer on %r, not one of this unit's answer topics: no answer",
                message.topic,
                response_topic,
            )
            return
        if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
            if verdict.applied:
                log.warning("command on %s: correlation data too long: no answer", message.topic)
            return
        answer = build_answer(
            unit=self._unit,
            request_id=verdict.request_id,
            command=verdict.command,
            refusal=verdict.refusal,
            subject_id=verdict.subject_id,
        )
        reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            reply.CorrelationData = bytes(correlation)
        info = client.publish(
            str(response_topic), encode("answer", self._event_key.sign(answer)), qos=1, properties=reply
        )
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._control_mids.add(info.mid)

    def _health_command(self, _command: Command) -> None:
        self._health_now.set()

    def _shutdown(self) -> None:
        client = self._client
        if client is None or not self._connected:
            if client is not None:
                client.disconnect()
            return
        deadline = time.monotonic() + SHUTDOWN_DRAIN_S
        while (
            time.monotonic() < deadline
            and self._client is not None
            and (self._inflight or self._outbox.pending(after_seq=self._cursor, limit=1))
        ):
            self._pump()
            client.loop(timeout=LOOP_TIMEOUT_S)
            self._outbox.erase_acknowledged()
        if self._client is None:
            return
        self._publish_control(
            self._topics.status,
            encode("status", build_status(self._unit, "offline", "shutdown", self._session)),
        )
        deadline = time.monotonic() + 2.0
        while self._control_mids and time.monotonic() < deadline and self._client is not None:
            client.loop(timeout=LOOP_TIMEOUT_S)
        # A normal DISCONNECT (reason 0) tells the broker not to send the Will.
        client.disconnect()
        client.loop(timeout=LOOP_TIMEOUT_S)
        self._connected = False
        self._client = None
