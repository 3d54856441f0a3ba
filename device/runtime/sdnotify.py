"""systemd's notify protocol (``sd_notify``) in plain Python: one datagram to ``$NOTIFY_SOCKET``.

The unit runs as ``Type=notify`` with ``WatchdogSec=``: it reports ``READY=1`` once the pipeline runs,
``WATCHDOG=1`` from the main loop (so a hung loop, not only a dead process, gets restarted) and only
while every watched liveness check holds (the MQTT I/O thread: a dead one means a restart, not silence),
``STOPPING=1`` on shutdown and a one-line ``STATUS=`` for ``systemctl status``. Outside systemd (no
``NOTIFY_SOCKET``) every call is a no-op, so the same code runs in a terminal and in tests.

No libsystemd binding is needed: the protocol is a single ``AF_UNIX``/``SOCK_DGRAM`` message of
newline-separated ``KEY=value`` pairs; a socket path starting with ``@`` names the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)

# systemd expects a ping well inside the watchdog interval; half of it leaves room for a slow frame.
WATCHDOG_PING_FRACTION = 0.5


@dataclass(frozen=True)
class WatchdogSettings:
    """What ``WATCHDOG_USEC``/``WATCHDOG_PID`` say about this process (``None`` = no watchdog)."""

    interval_s: float | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], pid: int) -> WatchdogSettings:
        usec = environ.get("WATCHDOG_USEC", "")
        owner = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the variable
        # must not feed (or starve) its parent's watchdog.
        if owner and owner != str(pid):
            return cls(None)
        if not usec.isdigit() or int(usec) == 0:
            return cls(None)
        return cls(int(usec) / 1_000_000)


def notify_socket_address(value: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd also knows vsock addresses (vsock:CID:PORT) for VMs; the unit never runs like that.
    logger.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket: notifications are off", value)
    return None


def format_message(fields: Mapping[str, str]) -> bytes:
    """``KEY=value`` lines; a newline inside a value would start a new (forged) key, so it is flattened."""
    lines = []
    for key, value in fields.items():
        if not key or not key.isupper() or "=" in key:
            raise ValueError(f"not a notify key: {key!r}")
        lines.append(f"{key}={value.replace(chr(10), ' ')}")
    return "\n".join(lines).encode("utf-8")


class Notifier(Protocol):
    """What the service loop tells its manager: ready, status, stopping, a watchdog tick per loop turn,
    and the liveness checks that must hold for the watchdog to be fed."""

    def ready(self, status: str | None = None) -> bool: ...

    def stopping(self, status: str | None = None) -> bool: ...

    def status(self, text: str) -> bool: ...

    def watch(self, name: str, alive: Callable[[], bool]) -> None: ...

    def __call__(self) -> None: ...


@dataclass
class SystemdNotifier:
    """Sends notify messages to the service manager; silent (returns False) when there is none."""

    address: str | None
    watchdog: WatchdogSettings = field(default_factory=lambda: WatchdogSettings(None))
    clock: Callable[[], float] = time.monotonic
    _last_ping: float | None = field(default=None, init=False, repr=False)
    _checks: dict[str, Callable[[], bool]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        return cls(
            address=notify_socket_address(env.get("NOTIFY_SOCKET", "")),
            watchdog=WatchdogSettings.from_environment(env, os.getpid()),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """One datagram; True when it was handed to the service manager's socket."""
        if self.address is None:
            return False
        message = format_message(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as error:
            # A lost notification must never take the unit down; systemd's watchdog will notice.
            logger.warning("sd_notify to %r failed: %s", self.address.lstrip("\0"), error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def stopping(self, status: str | None = None) -> bool:
        fields = {"STOPPING": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def ping_watchdog(self) -> bool:
        """``WATCHDOG=1`` unconditionally."""
        sent = self.send(WATCHDOG="1")
        if sent:
            self._last_ping = self.clock()
        return sent

    def watch(self, name: str, alive: Callable[[], bool]) -> None:
        """Adds a liveness check: while ``alive()`` is False the watchdog is not fed, so systemd restarts."""
        self._checks[name] = alive

    def failing_checks(self) -> list[str]:
        return [name for name, alive in self._checks.items() if not alive()]

    def __call__(self) -> None:
        """The pipeline's ``watchdog`` hook, called every loop iteration: pings at most every half interval.

        Without a watchdog (no ``WATCHDOG_USEC``) this does nothing, so it is safe to always pass in.
        """
        interval = self.watchdog.interval_s
        if interval is None or self.address is None:
            return
        now = self.clock()
        if self._last_ping is None or now - self._last_ping >= interval * WATCHDOG_PING_FRACTION:
            # Counted as a ping even when the send failed, so a broken socket logs once per interval
            # instead of once per frame.
            self._last_ping = now
            failing = self.failing_checks()
            if failing:
                logger.error("not feeding the watchdog: %s not alive", ", ".join(failing))
                return
            self.ping_watchdog()
