"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.runtime.sdnotify import (
    SystemdNotifier,
    WatchdogSettings,
    format_message,
    notify_socket_address,
)

NotifySocket = tuple[str, socket.socket]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket like the one systemd passes in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2.0)
    try:
        yield str(path), server
    finally:
        server.close()


def received(server: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, decoded."""
    messages = []
    server.settimeout(0.2)
    while True:
        try:
            messages.append(server.recv(4096).decode())
        except TimeoutError:
            return messages


def test_ready_status_and_stopping_arrive_as_systemd_reads_them(notify_socket: NotifySocket) -> None:
    path, server = notify_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})

    assert notifier.ready(status="running: 15 fps")
    assert notifier.status("degraded: Edge TPU missing, running on CPU")
    assert notifier.stopping()

    assert received(server) == [
        "READY=1\nSTATUS=running: 15 fps",
        "STATUS=degraded: Edge TPU missing, running on CPU",
        "STOPPING=1",
    ]


def test_without_notify_socket_every_call_is_a_quiet_no_op() -> None:
    notifier = SystemdNotifier.from_environment({})

    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.ping_watchdog()
    notifier()  # the pipeline's hook must not fail outside systemd


def test_abstract_namespace_socket_is_supported() -> None:
    name = f"entrance-camera-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert received(server) == ["READY=1"]
    finally:
        server.close()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})

    assert not notifier.ready()
    assert "sd_notify" in caplog.text


def test_watchdog_hook_pings_at_most_every_half_interval(notify_socket: NotifySocket) -> None:
    path, server = notify_socket
    clock = FakeClock()
    notifier = SystemdNotifier(address=path, watchdog=WatchdogSettings(interval_s=10.0), clock=clock)

    notifier()  # first loop iteration: ping
    clock.now += 1.0
    notifier()  # 1 s later: too soon
    clock.now += 4.0
    notifier()  # 5 s after the first: half the interval, ping again
    clock.now += 0.1
    notifier()

    assert received(server) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_hook_is_silent_when_systemd_set_no_watchdog(notify_socket: NotifySocket) -> None:
    path, server = notify_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})

    notifier()

    assert received(server) == []


def test_watchdog_settings_follow_watchdog_usec_and_pid() -> None:
    assert WatchdogSettings.from_environment({"WATCHDOG_USEC": "30000000"}, pid=42).interval_s == 30.0
    assert (
        WatchdogSettings.from_environment(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42
        ).interval_s
        == 30.0
    )
    # Meant for another process (we are a child that inherited the environment): not ours to feed.
    assert (
        WatchdogSettings.from_environment(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42
        ).interval_s
        is None
    )
    assert WatchdogSettings.from_environment({"WATCHDOG_USEC": "0"}, pid=42).interval_s is None
    assert WatchdogSettings.from_environment({"WATCHDOG_USEC": "soon"}, pid=42).interval_s is None


def test_a_newline_in_a_status_cannot_forge_another_key() -> None:
    assert format_message({"STATUS": "ok\nREADY=1"}) == b"STATUS=ok READY=1"
    with pytest.raises(ValueError, match="not a notify key"):
        format_message({"ready": "1"})


def test_socket_addresses() -> None:
    assert notify_socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_socket_address("@abstract") == "\0abstract"
    assert notify_socket_address("") is None
    assert notify_socket_address("vsock:2:1234") is None


def test_a_child_process_notifies_like_the_service_would(notify_socket: NotifySocket) -> None:
    """The real process boundary: the environment systemd sets, a separate interpreter sending."""
    path, server = notify_socket
    code = (
        "from device.runtime.sdnotify import SystemdNotifier\n"
        "n = SystemdNotifier.from_environment()\n"
        "n.ready(status='up')\n"
        "n()\n"
        "n.stopping()\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)

    assert received(server) == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]
