"""Issue 26: `device door` is a service. It announces itself (``online`` retained, ``offline`` on a clean
stop and as its last will), feeds systemd's watchdog only while its subscription is confirmed, and
prints one line per decision. Real Mosquitto with the project's ACL, the real CLI, systemd's notify
protocol on a real datagram socket (device/runtime/sdnotify.py), gpiozero's mock pins for the relay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_probe import Probe, connect_probe

from device.cli import main
from device.events.signing import EventKey, registry_text
from tests.consumers.test_consumers_never_deaf import StderrLines, connection
from tests.events.test_mqtt_publisher import wait_for
from tests.events.test_poison_payloads import RawClient
from tests.events.test_signed_events import signed

DEVICE = str(Path(sys.executable).with_name("device"))
DOOR_IDENTITY = "backend"  # the consumer certificate the door runs with: its status topic is named by it
STATUS_TOPIC = f"entrance/consumers/{DOOR_IDENTITY}/status"


def door_argv(broker: Any, tmp_path: Path, unit: str, timeout_s: float) -> list[str]:
    registry = tmp_path / "keys.json"
    if not registry.exists():
        key = EventKey.load_or_create(tmp_path / "unit.key")
        registry.write_text(registry_text({unit: key.public_text}))
    audit = tmp_path / "door-audit.jsonl"
    first_start = [] if audit.exists() else ["--start-fresh"]  # the door refuses to start without it
    return ["door", "--unit", unit, "--relay-gpio", "17", "--keys", str(registry),
            "--audit", str(audit), *first_start, *connection(broker, DOOR_IDENTITY),
            "--timeout", str(timeout_s)]  # fmt: skip


@pytest.fixture
def watcher(mosquitto_broker: Any) -> Iterator[Probe]:
    """Another consumer (monitoring) that reads the doors' status."""
    cert, key = mosquitto_broker.cert_for("tail")
    client = connect_probe(
        mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file, cert, key, "tail"
    )
    client.subscribe("entrance/consumers/+/status")
    yield client
    client.close()


def statuses(watcher: Probe) -> list[bytes]:
    return [bytes(m.payload) for m in list(watcher.messages) if m.topic == STATUS_TOPIC]


@pytest.fixture
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


@pytest.mark.slow
def test_the_door_says_online_while_it_listens_and_offline_when_it_stops(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], watcher: Probe, mock_pins: None
) -> None:
    unit = "unit-door-status"
    unit_key = EventKey.load_or_create(tmp_path / "unit.key")
    result: list[int] = []
    door = threading.Thread(
        target=lambda: result.append(main(door_argv(mosquitto_broker, tmp_path, unit, 8)))
    )
    stderr = StderrLines(capsys)
    door.start()
    try:
        assert wait_for(lambda: stderr.said("door listening on"), 15), stderr.lines
        assert wait_for(lambda: statuses(watcher)[-1:] == [b"online"], 5), statuses(watcher)
        sender = RawClient(mosquitto_broker, unit)
        now = time.time()
        opening = signed(unit_key, unit, 1, when=now)
        unknown = signed(unit_key, unit, 2, when=now) | {"type": "unknown", "subject": None}
        sender.publish(f"entrance/{unit}/events", json.dumps(opening).encode())
        sender.publish(f"entrance/{unit}/events", json.dumps(unit_key.sign(unknown)).encode())
        assert wait_for(lambda: len(stderr.read() and stderr.out) >= 2, 10), stderr.out
        sender.close()
    finally:
        door.join(20)
    assert result == [0], stderr.lines
    assert wait_for(lambda: statuses(watcher)[-1:] == [b"offline"], 5), statuses(watcher)
    # A late subscriber (a monitoring dashboard started afterwards) gets the retained last word.
    assert retained(mosquitto_broker, STATUS_TOPIC) == b"offline"
    stderr.read()
    assert stderr.out == [
        f"{unit} #1 recognized: opened for s-1",
        f"{unit} #2 unknown: kept shut (type 'unknown' never opens)",
    ]


def retained(broker: Any, topic: str) -> bytes:
    cert, key = broker.cert_for("tail")
    late = connect_probe(broker.host, broker.port, broker.ca_file, cert, key, "tail")
    try:
        late.subscribe(topic)
        return bytes(late.wait_for_message(topic).payload)
    finally:
        late.close()


@pytest.mark.slow
def test_a_killed_door_is_announced_offline_by_its_last_will(
    mosquitto_broker: Any, tmp_path: Path, watcher: Probe
) -> None:
    argv = door_argv(mosquitto_broker, tmp_path, "unit-door-will", 60)
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    door = subprocess.Popen(
        [DEVICE, *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert door.stderr is not None
        while "door listening on" not in door.stderr.readline():
            assert door.poll() is None, "the door ended before it listened"
        assert wait_for(lambda: statuses(watcher)[-1:] == [b"online"], 5), statuses(watcher)
        door.send_signal(signal.SIGKILL)  # no clean stop: only the broker can say it
        door.wait(10)
    finally:
        if door.poll() is None:
            door.kill()
            door.wait(10)
    assert wait_for(lambda: statuses(watcher)[-1:] == [b"offline"], 10), statuses(watcher)


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket in the abstract namespace, drained by a thread as
    systemd would (a full queue would block the sender), each message kept with its arrival time."""

    def __init__(self) -> None:
        self.name = f"@entrance-door-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name[1:])
        self.socket.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def read(self) -> list[str]:
        return [text for _at, text in list(self.messages)]

    def pings_since(self, moment: float) -> int:
        return sum(1 for at, text in list(self.messages) if at >= moment and text == "WATCHDOG=1")

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.socket.close()


@pytest.mark.slow
def test_the_watchdog_is_fed_only_while_the_subscription_is_alive(
    mosquitto_broker: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mock_pins: None,
) -> None:
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.name)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping at least every 0.5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))  # the door runs in this process (a thread)
    result: list[int] = []
    argv = door_argv(mosquitto_broker, tmp_path, "unit-door-watchdog", 25)
    door = threading.Thread(target=lambda: result.append(main(argv)))
    stderr = StderrLines(capsys)
    door.start()
    try:
        assert wait_for(lambda: any(m.startswith("READY=1") for m in notify.read()), 15), notify.messages
        listening = time.monotonic()
        assert wait_for(lambda: notify.pings_since(listening) >= 2, 5), notify.messages
        mosquitto_broker.stop()
        assert wait_for(lambda: stderr.said("connection lost to"), 10), stderr.lines
        deaf = time.monotonic()
        time.sleep(2.5)  # measuring an absence: five ping intervals in which none may come
        assert notify.pings_since(deaf) == 0, notify.messages
        mosquitto_broker.start()
        assert wait_for(lambda: stderr.said("listening again on"), 20), stderr.lines
        back = time.monotonic()
        assert wait_for(lambda: notify.pings_since(back) >= 2, 5), notify.messages
    finally:
        mosquitto_broker.start()
        door.join(60)
        notify.close()
    assert result == [0], stderr.lines
    assert notify.messages[-1][1].startswith("STOPPING=1")


def on_a_raspberry_pi() -> bool:
    model = Path("/proc/device-tree/model")
    return model.exists() and "Raspberry Pi" in model.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.skipif(on_a_raspberry_pi(), reason="a Pi has a working pin factory")
def test_off_a_pi_the_door_says_in_one_line_how_to_try_it_with_mock_pins(tmp_path: Path) -> None:
    # No broker is needed: the relay is opened before the door connects.
    argv = door_argv_offline(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "GPIOZERO_PIN_FACTORY"}
    result = subprocess.run([DEVICE, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback, no four fallback warnings
    assert lines[0].startswith("error: no GPIO pin factory works on this machine")
    assert "GPIOZERO_PIN_FACTORY=mock" in lines[0]


def door_argv_offline(tmp_path: Path) -> list[str]:
    key = EventKey.load_or_create(tmp_path / "unit.key")
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({"unit-x": key.public_text}))
    ca = tmp_path / "ca.crt"
    ca.write_text("not used: the relay fails first\n")
    return ["door", "--unit", "unit-x", "--relay-gpio", "17", "--keys", str(registry),
            "--audit", str(tmp_path / "audit.jsonl"), "--start-fresh", "--host", "localhost", "--port", "1",
            "--ca", str(ca), "--cert", str(tmp_path / "c.crt"), "--key", str(tmp_path / "c.key")]  # fmt: skip
