"""Fault scenarios against a real Mosquitto and real unit processes; each returns measured numbers.

Used by `make reliability` (tests/reliability/run.py, long faults) and by the fast subset in
`make test` (tests/reliability/test_reliability_fast.py, short faults). Nothing here decides a result
by itself: every count comes from what a consumer actually received and what the unit's outbox
actually committed.

- "sent" is the last ``seq`` the unit committed to its outbox (every seq from 1 up was committed once);
- "delivered" counts distinct seqs a consumer received; "lost" = committed seqs never received;
- "duplicates_after_dedup": a seq that arrived under two different event ids (deduplication by
  event_id cannot remove it; it would mean the unit re-created an event);
- "out_of_order": first arrivals whose seq is below one already received.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from command_support import commander_key, signed, trust_file
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.events.payloads import PayloadError, decode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EMITTER = HERE / "unit_emitter.py"
KEEPALIVE_S = 5


def _client(client_id: str = "") -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)


def _tls(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class PreconditionError(AssertionError):
    """A state the next check depends on never came: the check would prove nothing, so the run fails."""


def must(predicate: Any, timeout: float, step: float, what: str) -> None:
    """``wait_for`` whose failure ends the run: for every wait a later check relies on (a unit back
    online before a stale claim is judged, say), so that check can never pass vacuously."""
    if not wait_for(predicate, timeout, step):
        raise PreconditionError(f"{what} (waited {timeout:g} s)")


@dataclass
class Monitor:
    """A consumer (persistent session) that records and schema-checks everything units publish."""

    broker: Any
    identity: str = "backend"
    client_id: str = "reliability-monitor"
    events: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    statuses: list[tuple[float, str, str, str]] = field(default_factory=list)
    topics_seen: list[str] = field(default_factory=list)
    max_payload_bytes: int = 0
    payloads: int = 0
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        cert, key = self.broker.cert_for(self.identity)
        self._client = _client(self.client_id)
        self._client.tls_set_context(_tls(self.broker.ca_file, cert, key))
        self._client.reconnect_delay_set(0.1, 1.0)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def start(self) -> Monitor:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self._client.connect_async(
            self.broker.host, self.broker.port, keepalive=10, clean_start=False, properties=properties
        )
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the monitor could not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        prefix = self.broker.prefix
        client.subscribe([(f"{prefix}/+/{kind}", 1) for kind in ("events", "status", "health")])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        unit = message.topic.split("/")[-2]
        data = bytes(message.payload)
        with self._lock:
            self.topics_seen.append(message.topic)
            self.payloads += 1
            self.max_payload_bytes = max(self.max_payload_bytes, len(data))
            try:
                payload = decode(
                    "health" if kind == "health" else "status" if kind == "status" else "event", data
                )
            except PayloadError as error:
                self.invalid.append(f"{message.topic}: {error}")
                return
            if kind == "events":
                self.events[unit].append((int(payload["seq"]), str(payload["event_id"])))
            elif kind == "status":
                self.statuses.append((time.monotonic(), unit, payload["state"], payload["reason"]))

    def delivered_seqs(self, unit: str) -> set[int]:
        with self._lock:
            return {seq for seq, _ in self.events[unit]}

    def status_since(self, unit: str, since: float, state: str, reason: str) -> float | None:
        with self._lock:
            for when, who, what, why in self.statuses:
                if who == unit and when >= since and what == state and why == reason:
                    return when
        return None


def analyse(arrivals: list[tuple[int, str]], committed: int) -> dict[str, int]:
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    seen_ids: set[str] = set()
    out_of_order = 0
    highest = 0
    for seq, event_id in arrivals:
        if event_id in seen_ids:
            continue  # a redelivery; the consumer's deduplication drops it
        seen_ids.add(event_id)
        ids_by_seq[seq].add(event_id)
        if seq < highest:
            out_of_order += 1
        highest = max(highest, seq)
    delivered = {seq for seq in ids_by_seq if 1 <= seq <= committed}
    return {
        "sent": committed,
        "delivered": len(delivered),
        "lost": committed - len(delivered),
        "duplicates_after_dedup": sum(len(ids) - 1 for ids in ids_by_seq.values()),
        "out_of_order": out_of_order,
    }


def committed_seq(outbox: Path) -> tuple[int, int, int]:
    """(last seq committed, rows still in the outbox, dropped) read straight from the unit's database."""
    db = sqlite3.connect(outbox)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    return int(meta["last_seq"]), int(depth), int(meta["dropped"])


class UnitProcess:
    """tests/reliability/unit_emitter.py in its own process with its own config and outbox."""

    def __init__(self, broker: Any, unit: str, workdir: Path, *, rate: float = 10.0) -> None:
        self.unit = unit
        self.rate = rate
        workdir.mkdir(parents=True, exist_ok=True)
        self.outbox = workdir / "outbox.db"
        self.log = workdir / "emitter.log"
        self.config = self.write_config(broker, unit, workdir)
        self._process: subprocess.Popen[bytes] | None = None

    def write_config(self, broker: Any, unit: str, workdir: Path) -> Path:
        config = workdir / "unit.toml"
        config.write_text(self.config_text(broker, unit, workdir, [f'state_dir = "{workdir / "state"}"']))
        return config

    def config_text(self, broker: Any, unit: str, workdir: Path, unit_lines: list[str]) -> str:
        """The [unit] and [mqtt] blocks every process under test gets: this unit's certificate, the outbox,
        the harness's commander as the one it trusts."""
        cert, key = broker.cert_for(unit)
        commanders = trust_file(workdir / "trust")
        return (
            "\n".join(
                [
                    "[unit]",
                    f'id = "{unit}"',
                    *unit_lines,
                    "[mqtt]",
                    "enabled = true",
                    'host = "localhost"',
                    f"port = {broker.port}",
                    f'topic_prefix = "{broker.prefix}"',
                    f"keepalive_s = {KEEPALIVE_S}",
                    f'command_keys = "{commanders}"',
                    'clock_check = "off"',  # no NTP discipline in the build containers
                    "health_interval_s = 1.0",
                    "reconnect_backoff_max_s = 1.0",
                    f'outbox_path = "{self.outbox}"',
                    "[mqtt.tls]",
                    f'ca_file = "{broker.ca_file}"',
                    f'cert_file = "{cert}"',
                    f'key_file = "{key}"',
                ]
            )
            + "\n"
        )

    def command(self) -> list[str]:
        return [sys.executable, str(EMITTER), str(self.config), "--rate", str(self.rate)]

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open but nothing is sent, like a cut cable; only keepalive notices."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM: the unit drains what it can, says offline and disconnects normally."""
        if self._process is None:
            return 0
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return -9

    def committed(self) -> tuple[int, int, int]:
        try:
            return committed_seq(self.outbox) if self.outbox.exists() else (0, 0, 0)
        except (sqlite3.OperationalError, KeyError):
            return (0, 0, 0)  # the unit is still creating its outbox


class RealUnitProcess(UnitProcess):
    """The real ``device run``: a unit made by ``device init``, its camera a looped clip of people walking
    in (file source, not paced), the whole pipeline on the CPU, events through its real outbox."""

    def __init__(self, broker: Any, unit: str, workdir: Path, clip: Path) -> None:
        self.clip = clip
        super().__init__(broker, unit, workdir)
        self.log = workdir / "device-run.log"

    def write_config(self, broker: Any, unit: str, workdir: Path) -> Path:
        from device.cli import main as device_main

        unit_dir = workdir / "unit"
        if device_main(["init", "--dir", str(unit_dir), "--operator", "reliability"]) != 0:
            raise RuntimeError(f"device init failed in {unit_dir}")
        made = tomllib.loads((unit_dir / "unit.toml").read_text(encoding="utf-8"))
        unit_lines = [f'{key} = "{made["unit"][key]}"' for key in ("state_dir",) if key in made["unit"]]
        blocks = [
            self.config_text(broker, unit, workdir, unit_lines),
            *(
                f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in made[name].items())
                for name in ("gallery", "models")
                if name in made
            ),
            "[capture]",
            'backend = "file"',
            f'source = "{self.clip}"',
            "loop = true",
            "realtime = false",
            "",
        ]
        config = unit_dir / "unit.toml"
        config.write_text("\n".join(blocks))
        return config

    def command(self) -> list[str]:
        return [sys.executable, "-m", "device", "run", "--config", str(self.config)]


def real_unit_kills(
    broker: Any, monitor: Monitor, workdir: Path, kills: int, clip: Path, *, rng_seed: int = 11
) -> dict[str, Any]:
    """``device run`` itself is SIGKILLed ``kills`` times, each time after it committed a new decision."""
    import random

    rng = random.Random(rng_seed)
    unit = RealUnitProcess(broker, "unit-real", workdir / "real", clip)
    stalled = 0
    for _ in range(kills):
        unit.start()
        before = unit.committed()[0]
        if not wait_for(lambda before=before: unit.committed()[0] > before, 60.0, 0.1):
            stalled += 1  # counted: a kill that found nothing new committed proves less
        time.sleep(rng.uniform(0.1, 1.0))
        unit.kill()
    unit.start()
    must(lambda: unit.committed()[1] == 0, 30.0, 0.2, "the restarted unit emptied its outbox")
    unit.stop()
    result: dict[str, Any] = _drain(monitor, unit, 60.0)
    result["kills"] = kills
    result["kills_without_a_new_decision"] = stalled
    result["process"] = "python -m device run (file source: a looped walk-in clip, MQTT on, real outbox)"
    return result


def _drain(monitor: Monitor, unit: UnitProcess, timeout: float) -> dict[str, int]:
    """Restarts the unit once (it replays whatever is left), waits for delivery, stops it cleanly."""
    last, depth, _ = unit.committed()
    if depth:
        unit.start()
        wait_for(lambda: unit.committed()[1] == 0, timeout, 0.2)
        unit.stop()
    last, depth, dropped = unit.committed()
    wait_for(lambda: len(monitor.delivered_seqs(unit.unit) & set(range(1, last + 1))) >= last, timeout, 0.1)
    result = analyse(list(monitor.events[unit.unit]), last)
    result["left_in_outbox"] = depth
    result["dropped_by_outbox"] = dropped
    return result


def broker_outage(
    broker: Any,
    monitor: Monitor,
    workdir: Path,
    outage_s: float,
    *,
    warmup_s: float = 3.0,
    after_s: float = 3.0,
) -> dict[str, Any]:
    """The broker is SIGKILLed for outage_s while the unit emits ~10 events/s, then restarted."""
    unit = UnitProcess(broker, "unit-outage", workdir / "outage")
    unit.start()
    time.sleep(warmup_s)
    broker.kill()
    killed = time.monotonic()
    time.sleep(outage_s)
    during, _, _ = unit.committed()
    broker.start()
    restarted = time.monotonic()
    time.sleep(after_s)
    unit.stop()
    result: dict[str, Any] = _drain(monitor, unit, 60.0)
    result["outage_s"] = round(restarted - killed, 1)
    result["committed_before_restart"] = during
    return result


def unit_kills(
    broker: Any, monitor: Monitor, workdir: Path, kills: int, *, rng_seed: int = 7
) -> dict[str, Any]:
    """The unit is SIGKILLed mid-stream ``kills`` times and restarted each time."""
    import random

    rng = random.Random(rng_seed)
    unit = UnitProcess(broker, "unit-kills", workdir / "kills")
    committed_at_kill = []
    for _ in range(kills):
        unit.start()
        # Wait until this run has committed something, then kill at a random moment after that.
        before = unit.committed()[0]
        must(lambda before=before: unit.committed()[0] > before, 15.0, 0.05, "the emitter committed an event")
        time.sleep(rng.uniform(0.1, 0.6))
        unit.kill()
        committed_at_kill.append(unit.committed()[0])
    unit.start()
    time.sleep(1.0)
    unit.stop()
    result: dict[str, Any] = _drain(monitor, unit, 60.0)
    result["kills"] = kills
    return result


def connects(
    broker: Any, cert: Path | None, key: Path | None, ca: Path | None = None, timeout: float = 5.0
) -> bool:
    """True only if the broker answers CONNECT with success."""
    accepted = threading.Event()
    client = _client()
    client.tls_set_context(_tls(ca or broker.ca_file, cert, key))
    client.on_connect = lambda _c, _u, _f, rc, _p: accepted.set() if not rc.is_failure else None
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        return accepted.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


def authentication(broker: Any) -> dict[str, Any]:
    """Valid certificates connect (the control); anonymous, foreign-CA, expired, revoked do not."""
    valid = connects(broker, *broker.cert_for("unit-auth-ok"))
    revoked_cert = broker.cert_for("unit-auth-revoked")
    revoked_before = connects(broker, *revoked_cert)
    broker.revoke("unit-auth-revoked")
    outcome = {
        "anonymous": connects(broker, None, None),
        "wrong_ca": connects(broker, *broker.foreign_cert_for("unit-auth-x")),
        "expired": connects(broker, *broker.expired_cert_for("unit-auth-old")),
        "revoked": connects(broker, *revoked_cert),
    }
    return {
        "valid_accepted": valid and revoked_before,
        **{name: "accepted" if ok else "refused" for name, ok in outcome.items()},
        "all_refused": not any(outcome.values()),
    }


def cross_unit(broker: Any, monitor: Monitor) -> dict[str, Any]:
    """Unit A writes to unit B's topics and subscribes to B's commands; what gets *delivered*?"""
    prefix = broker.prefix
    a, b = "unit-cross-a", "unit-cross-b"
    received: list[str] = []
    reason_codes: dict[str, str] = {}
    acked: dict[int, str] = {}
    done = threading.Event()
    subscribed = threading.Event()
    client = _client("cross-a")
    client.tls_set_context(_tls(broker.ca_file, *broker.cert_for(a)))
    client.on_message = lambda _c, _u, message: received.append(message.topic)
    client.on_subscribe = lambda _c, _u, _m, codes, _p: (
        reason_codes.update({"subscribe": ",".join(f"0x{code.value:02x}" for code in codes)}),
        subscribed.set(),
    )

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        reason_codes[acked.pop(mid, str(mid))] = f"0x{rc.value:02x}"
        if not acked:
            done.set()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    client.subscribe(
        [(f"{prefix}/{b}/cmd/#", 1), (f"{prefix}/{b}/#", 1), ("#", 1), (f"{prefix}/{a}/cmd/#", 1)]
    )
    subscribed.wait(5)
    seen_before = len(monitor.topics_seen)
    marker = b'{"cross-unit":"from-a"}'
    targets = {
        "publish_b_events": f"{prefix}/{b}/events",
        "publish_b_status": f"{prefix}/{b}/status",
        "publish_b_health": f"{prefix}/{b}/health",
        "publish_b_cmd": f"{prefix}/{b}/cmd/claim",
        "publish_ha_b": f"homeassistant/sensor/{b}/x/config",
    }
    for name, topic in targets.items():
        info = client.publish(topic, marker, qos=1)
        acked[info.mid] = name
    done.wait(5)
    # A consumer legitimately commands B (must not reach A) and A (must reach A: the control).
    commander = _client("cross-commander")
    commander.tls_set_context(_tls(broker.ca_file, *broker.cert_for("backend")))
    commander.connect(broker.host, broker.port, keepalive=10)
    commander.loop_start()
    claim = json.dumps({"command": "claim", "subject_id": "s-1"}).encode()
    commander.publish(f"{prefix}/{b}/cmd/claim", claim, qos=1).wait_for_publish(5)
    commander.publish(f"{prefix}/{a}/cmd/claim", claim, qos=1).wait_for_publish(5)
    # The control: A's own command reaches A, so "nothing of B's reached A" below is not vacuous.
    must(lambda: f"{prefix}/{a}/cmd/claim" in received, 3.0, 0.05, "unit A received its own command")
    time.sleep(0.5)
    commander.disconnect()
    commander.loop_stop()
    client.disconnect()
    client.loop_stop()
    own = f"{prefix}/{a}/cmd/"
    foreign_to_a = [topic for topic in received if not topic.startswith(own)]
    foreign_to_monitor = [t for t in monitor.topics_seen[seen_before:] if f"/{b}/" in t]
    return {
        "cross_unit_deliveries": len(foreign_to_a) + len(foreign_to_monitor),
        "reason_codes": reason_codes,
        "own_cmd_delivered": any(topic.startswith(own) for topic in received),
    }


def last_will(broker: Any, monitor: Monitor, workdir: Path, *, freeze: bool = False) -> dict[str, Any]:
    """Offline from the Will soon after a SIGKILL; no Will after a clean stop (offline/shutdown instead)."""
    unit = UnitProcess(broker, "unit-lwt", workdir / "lwt")
    name = unit.unit
    start = time.monotonic()
    unit.start()
    online = wait_for(lambda: monitor.status_since(name, start, "online", "connected") is not None, 15.0)
    killed = time.monotonic()
    unit.kill()
    limit = 1.5 * KEEPALIVE_S
    wait_for(lambda: monitor.status_since(name, killed, "offline", "connection_lost") is not None, limit + 2)
    will_at = monitor.status_since(name, killed, "offline", "connection_lost")
    restart = time.monotonic()
    unit.start()
    must(lambda: monitor.status_since(name, restart, "online", "connected") is not None, 15.0, 0.05,
         "the unit was online again before its clean stop")  # fmt: skip
    stopped = time.monotonic()
    unit.stop()
    clean = wait_for(lambda: monitor.status_since(name, stopped, "offline", "shutdown") is not None, 5.0)
    time.sleep(limit + 1.0)
    will_after_clean = monitor.status_since(name, stopped, "offline", "connection_lost") is not None
    frozen: dict[str, Any] = {}
    if freeze:
        # SIGKILL closes the socket at once (the kernel sends FIN), so it does not exercise keepalive;
        # a frozen process does: the broker must notice the silence itself.
        restart = time.monotonic()
        unit.start()
        must(lambda: monitor.status_since(name, restart, "online", "connected") is not None, 15.0, 0.05,
             "the unit was online before it was frozen")  # fmt: skip
        time.sleep(1.0)
        frozen_at = time.monotonic()
        unit.freeze()
        wait_for(
            lambda: monitor.status_since(name, frozen_at, "offline", "connection_lost") is not None,
            3 * KEEPALIVE_S,
        )
        seen = monitor.status_since(name, frozen_at, "offline", "connection_lost")
        unit.kill()
        frozen = {"offline_after_freeze_s": None if seen is None else round(seen - frozen_at, 2)}
    return {
        **frozen,
        "keepalive_s": KEEPALIVE_S,
        "online_seen": online,
        "offline_after_kill_s": None if will_at is None else round(will_at - killed, 2),
        "offline_within_1_5x_keepalive": will_at is not None and will_at - killed <= limit,
        "offline_shutdown_after_clean_stop": clean,
        "will_after_clean_stop": will_after_clean,
    }


POISON_COMMANDS = (
    b"[" * 1500,
    b'{"a":' * 1000,
    b'{"command": "claim", "subject_id": NaN}',
    b'{"command": "health", "command": "claim", "subject_id": "s-1"}',
    b"\xff\xfe{}",
)


def _claim(subject: str, request_id: str, ttl_s: float, *, unit: str, trusted: bool = True) -> bytes:
    """A claim signed by the commander the units trust, or (``trusted=False``) by an intruder's key."""
    if trusted:
        return signed("claim", subject, unit=unit, request_id=request_id, ttl_s=ttl_s)
    return signed("claim", subject, unit=unit, request_id=request_id, ttl_s=ttl_s, key=commander_key(seed=99))


def trust(broker: Any, monitor: Monitor, workdir: Path) -> dict[str, Any]:
    """Issue 13: a consumer forging events, poison commands, a claim that goes stale in the queue."""
    unit = UnitProcess(broker, "unit-trust", workdir / "trust")
    applied = workdir / "trust" / "state" / "claims-applied.log"
    consumer = _client()
    cert, key = broker.cert_for("backend")
    consumer.tls_set_context(_tls(broker.ca_file, cert, key))
    codes: dict[int, int] = {}
    consumer.on_publish = lambda _c, _u, mid, rc, _p: codes.__setitem__(mid, rc.value)
    consumer.connect(broker.host, broker.port, keepalive=10)
    consumer.loop_start()

    def send(topic: str, payload: bytes) -> int | None:
        info = consumer.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in codes, 5.0)
        return codes.get(info.mid)

    try:
        unit.start()
        must(lambda: len(monitor.delivered_seqs(unit.unit)) >= 3, 20.0, 0.05, "the unit delivered events")
        # Forgery with a consumer certificate: as the unit, and as a "unit" named like the consumer.
        forged = b'{"forged": true}'
        forgery_codes = [
            send(f"{broker.prefix}/{unit.unit}/events", forged),
            send(f"{broker.prefix}/backend/events", forged),
            send(f"{broker.prefix}/backend/status", forged),
        ]
        # Poison commands, then: does the same unit process still deliver new events?
        cmd = f"{broker.prefix}/{unit.unit}/cmd/claim"
        for payload in POISON_COMMANDS:
            send(cmd, payload)
        after_poison = max(monitor.delivered_seqs(unit.unit), default=0)
        alive_pid = unit.pid
        delivers = wait_for(
            lambda: max(monitor.delivered_seqs(unit.unit), default=0) > after_poison + 10, 20.0
        )
        survived = bool(delivers and unit.pid == alive_pid and unit.running)
        # A fresh claim applies (the control) ...
        fresh = _claim("s-fresh", "r-fresh", 30.0, unit=unit.unit)
        send(cmd, fresh)
        control_applied = wait_for(lambda: applied.exists() and "s-fresh" in applied.read_text(), 10.0)
        # ... the same claim recorded and sent again, and one signed by a key the unit does not trust, do not.
        send(cmd, fresh)
        send(cmd, _claim("s-forged", "r-forged", 30.0, unit=unit.unit, trusted=False))
        time.sleep(1.0)
        replayed_applied = applied.read_text().count("s-fresh") > 1 if applied.exists() else False
        untrusted_applied = applied.exists() and "s-forged" in applied.read_text()
        # ... a claim queued while the unit is away and expired before it returns does not.
        unit.stop()
        send(cmd, _claim("s-stale", "r-stale", 1.0, unit=unit.unit))
        time.sleep(2.0)
        unit.start()
        before = max(monitor.delivered_seqs(unit.unit), default=0)
        # Back online and delivering, so it had the chance to act on the queued stale claim.
        must(lambda: max(monitor.delivered_seqs(unit.unit), default=0) > before + 5, 20.0, 0.05,
             "the unit reconnected and delivered after the stale claim was queued")  # fmt: skip
        stale_applied = applied.exists() and "s-stale" in applied.read_text()
        unit.stop()
    finally:
        consumer.disconnect()
        consumer.loop_stop()
    forged_delivered = sum(1 for topic in monitor.topics_seen if "/backend/" in topic)
    forged_delivered += sum(1 for problem in monitor.invalid if "forged" in problem or unit.unit in problem)
    return {
        "consumer_forgery_reason_codes": [
            f"0x{code:02x}" if code is not None else None for code in forgery_codes
        ],
        "consumer_forgery_delivered": forged_delivered,
        "poison_payloads_survived": survived,
        "fresh_claim_applied": control_applied,
        "stale_claim_applied": stale_applied,
        "replayed_claim_applied": replayed_applied,
        "untrusted_claim_applied": untrusted_applied,
    }


def walk_in_clip(path: Path) -> Path:
    """Two people (fixture photos) walking into the generated entrance: what the real unit's camera sees."""
    from device.config import UnitConfig
    from device.evaluation import fixtures
    from device.lab.democlip import demo_walks, make_clip
    from device.vision.faces import load_stages

    config = UnitConfig.model_validate({"models": {"dir": str(REPO / "models"), "accelerator": "cpu"}})
    detect = load_stages(config).detector.detect
    walks = demo_walks(fixtures.load_rgb("obama.jpg"), fixtures.load_rgb("biden.jpg"))
    return make_clip(path, walks, detect).path


def run_all(
    broker: Any, workdir: Path, *, outage_s: float, kills: int, real_kills: int, freeze: bool = False
) -> dict[str, Any]:
    """Every scenario; ``kills`` SIGKILLs of the stand-in emitter and ``real_kills`` of ``device run``."""
    clip = walk_in_clip(workdir / "walk-in.avi")
    monitor = Monitor(broker).start()
    # The monitor's session must be on disk before the broker is killed, or its queue dies with it.
    broker.wait_saved(time.time_ns() - 10**9)
    try:
        outage = broker_outage(broker, monitor, workdir, outage_s)
        crashes = unit_kills(broker, monitor, workdir, kills)
        real_crashes = real_unit_kills(broker, monitor, workdir, real_kills, clip)
        cross = cross_unit(broker, monitor)
        auth = authentication(broker)
        will = last_will(broker, monitor, workdir, freeze=freeze)
        trusted = trust(broker, monitor, workdir)
    finally:
        monitor.stop()
    totals = {
        key: outage[key] + crashes[key] + real_crashes[key]
        for key in ("sent", "delivered", "lost", "duplicates_after_dedup", "out_of_order")
    }
    summary: dict[str, Any] = {
        **totals,
        "cross_unit_deliveries": cross["cross_unit_deliveries"],
        "max_payload_bytes": monitor.max_payload_bytes,
        "payloads_checked": monitor.payloads,
        "all_payloads_schema_valid": not monitor.invalid,
        "invalid_payloads": monitor.invalid[:5],
        "broker_outage": outage,
        "unit_kills": crashes,
        "real_unit_kills": real_crashes,
        "cross_unit": cross,
        "auth": auth,
        "lwt": will,
        "consumer_forgery_delivered": trusted["consumer_forgery_delivered"],
        "poison_payloads_survived": trusted["poison_payloads_survived"],
        "stale_claim_applied": trusted["stale_claim_applied"],
        "untrusted_claim_applied": trusted["untrusted_claim_applied"],
        "trust": trusted,
    }
    summary["targets_met"] = bool(
        summary["lost"] == 0
        and summary["duplicates_after_dedup"] == 0
        and summary["out_of_order"] == 0
        and summary["cross_unit_deliveries"] == 0
        and real_crashes["kills_without_a_new_decision"] == 0
        and summary["max_payload_bytes"] < 2048
        and summary["all_payloads_schema_valid"]
        and auth["all_refused"]
        and auth["valid_accepted"]
        and cross["own_cmd_delivered"]
        and will["offline_within_1_5x_keepalive"]
        and will["offline_shutdown_after_clean_stop"]
        and not will["will_after_clean_stop"]
        and trusted["consumer_forgery_delivered"] == 0
        and trusted["poison_payloads_survived"]
        and trusted["fresh_claim_applied"]
        and not trusted["stale_claim_applied"]
        and not trusted["replayed_claim_applied"]
        and not trusted["untrusted_claim_applied"]
    )
    return summary
