"""A real Mosquitto for tests: the project's own config and ACL, certificates from deploy/broker/pki.py.

    broker = MosquittoBroker(tmp_path)      # makes the PKI, renders the config, picks a free port
    broker.start()
    cert, key = broker.cert_for("unit-a")   # issued on first use (CN = identity)
    ... connect with TLS to broker.host:broker.port, CA broker.ca_file ...
    broker.kill()                           # SIGKILL, to test crash recovery
    broker.start()                          # same port, same persistence directory
    broker.revoke("unit-a")                 # CRL rewritten, broker reloaded (SIGHUP)
    broker.stop()                           # SIGTERM, persistence saved

The system's own Mosquitto service (if any) plays no part: this one has its own config, port and data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy.broker.pki import CertFiles, Pki, Role
from deploy.broker.render import BrokerSettings, write_broker_config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_CONSUMERS = ("backend", "tail")


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto not found: run `bash deploy/dev/system-packages.sh` (apt mosquitto)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One Mosquitto process on loopback with TLS, client certificates, CRL and the fleet ACL."""

    def __init__(
        self,
        root: Path,
        *,
        prefix: str = "entrance",
        consumers: tuple[str, ...] = DEFAULT_CONSUMERS,
        ha_discovery: bool = True,
        port: int | None = None,
    ) -> None:
        self.root = root
        self.host = HOST
        self.port = port or free_port()
        self.prefix = prefix
        self.consumers = consumers
        self.pki = Pki(root / "pki")
        self.pki.init(ca_name="test broker CA")
        self.pki.issue_broker()
        # A second CA nobody trusts, for "wrong CA" tests.
        self._foreign = Pki(root / "foreign-pki")
        self._foreign.init(ca_name="untrusted CA")
        self.log_file = root / "mosquitto.log"
        self.conf_file = write_broker_config(
            BrokerSettings(
                pki_dir=self.pki.dir,
                out_dir=root / "conf",
                prefix=prefix,
                consumers=consumers,
                ha_discovery=ha_discovery,
                port=self.port,
                bind_address=HOST,
                log_dest="stderr",
                run_as_user=getpass.getuser(),
            )
        )
        self._certs: dict[str, tuple[Path, Path]] = {}
        self._reloads = 0
        self._process: subprocess.Popen[bytes] | None = None

    # Certificates ------------------------------------------------------------------------------
    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert_path

    def role_of(self, identity: str) -> Role:
        return "consumer" if identity in self.consumers else "unit"

    def cert_for(self, identity: str) -> tuple[Path, Path]:
        """(cert_file, key_file) for an identity, issued by the broker's CA on first use."""
        if identity not in self._certs:
            files = self.pki.issue_client(identity, self.role_of(identity))
            self._certs[identity] = (files.cert, files.key)
        return self._certs[identity]

    def expired_cert_for(self, identity: str) -> tuple[Path, Path]:
        """A certificate from the right CA whose validity ended yesterday (kept apart from cert_for's)."""
        target = self.root / "expired"
        files = self.pki.issue_client(
            identity,
            self.role_of(identity),
            days=1,
            not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
            files=CertFiles(target / f"{identity}.crt", target / f"{identity}.key"),
        )
        return files.cert, files.key

    def foreign_cert_for(self, identity: str) -> tuple[Path, Path]:
        """A certificate with the right CN from a CA the broker does not trust."""
        files = self._foreign.issue_client(identity, self.role_of(identity))
        return files.cert, files.key

    def revoke(self, identity: str) -> None:
        """Revokes every certificate of identity and makes the running broker load the new CRL."""
        self.pki.revoke(identity)
        self._certs.pop(identity, None)
        self.reload()

    # Process -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log_handle = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf_file)],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log_handle.close()
        self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"mosquitto exited on start; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not listen on {self.port} within {timeout} s; log:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM): Mosquitto saves its persistence database."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything, like a power cut on the broker."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its config, ACL, certificates and CRL."""
        if self._process is None or not self.running:
            return
        os.kill(self._process.pid, signal.SIGHUP)
        # There is no acknowledgement of a reload; wait for its log line.
        marker = b"Reloading config."
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.log_file.read_bytes().count(marker) < self._reloads + 1:
            time.sleep(0.02)
        self._reloads += 1

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def persistence_file(self) -> Path:
        return self.root / "conf" / "data" / "mosquitto.db"

    def wait_saved(self, since_ns: int, timeout: float = 5.0) -> bool:
        """Waits until Mosquitto has written its persistence file after `since_ns` (time.time_ns()).
        Mosquitto acknowledges a publish before it saves, so a crash in between loses the message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if self.persistence_file.stat().st_mtime_ns > since_ns:
                    return True
            time.sleep(0.01)
        return False

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.stop()
