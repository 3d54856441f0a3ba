"""A Mosquitto on loopback with the fleet config, for development (`make run`), checks and tests.

    broker = LocalBroker(Path("state/dev-broker"))   # PKI (made once, reused), config, free port
    broker.start()
    cert, key = broker.cert_for("demo-unit")          # issued on first use (CN = identity)
    ... connect with TLS to broker.host:broker.port, CA broker.ca_file ...
    broker.kill()                                     # SIGKILL, for crash tests
    broker.start()                                    # same port, same persistence directory
    broker.revoke("demo-unit")                        # CRL rewritten, broker reloaded (SIGHUP)
    broker.stop()                                     # SIGTERM, persistence saved

It never touches the system's Mosquitto service: own config, own port, own data directory. Also a
CLI that runs one in the foreground: `python3 -m deploy.broker.local --dir state/dev-broker`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from deploy.broker.bridge import BridgeSettings
from deploy.broker.pki import Pki, Role
from deploy.broker.render import BrokerSettings, write_broker_config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# home-assistant: the README's Home Assistant section uses this certificate against `make dev-broker`;
# door: the README's first unit runs the reference door consumer (door.sh) under its own name, so its
# status topic is its own.
DEFAULT_CONSUMERS = ("backend", "tail", "home-assistant", "door")
# Mosquitto logs "mosquitto version X running" once its listeners are bound.
RUNNING_MARKER = " running"
ADDRESS_IN_USE = "Address already in use"


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto not found: run `bash deploy/dev/system-packages.sh` (apt mosquitto)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """One Mosquitto process on loopback with TLS, client certificates, CRL and the fleet ACL."""

    def __init__(
        self,
        root: Path,
        *,
        prefix: str = "entrance",
        consumers: tuple[str, ...] = DEFAULT_CONSUMERS,
        ha_discovery: bool = True,
        port: int | None = None,
        service_user: str | None = None,
        bridge: BridgeSettings | None = None,
        central_site: str | None = None,
    ) -> None:
        """service_user: when started as root, Mosquitto drops to this user, who then owns the
        broker's copies of the certificates, the ACL and the data (production layout). Default: the
        current user, so nothing changes hands. bridge: a building broker bridged to a central one;
        central_site: this is the central broker, and every identity but the consumers is a building."""
        self.root = root
        self.service_user = service_user
        self.host = HOST
        # A port picked here can be taken by someone else before Mosquitto binds it; then the first
        # start picks another. Once started, the port stays: clients reconnect to it.
        self._port_is_free_choice = port is None
        self.port = port or free_port()
        self.prefix = prefix
        self.consumers = consumers
        self.ha_discovery = ha_discovery
        self.bridge = bridge
        self.central_site = central_site
        self.pki = Pki(root / "pki")
        if not self.pki.ca_cert_path.exists():
            self.pki.init(ca_name="local broker CA")
        if not self.pki.broker_files().cert.exists():
            self.pki.issue_broker()
        self.log_file = root / "mosquitto.log"
        self.conf_file = self._render()
        self._certs: dict[str, tuple[Path, Path]] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def _render(self) -> Path:
        return write_broker_config(
            BrokerSettings(
                pki_dir=self.pki.dir,
                out_dir=self.root / "conf",
                prefix=self.prefix,
                consumers=self.consumers,
                ha_discovery=self.ha_discovery,
                port=self.port,
                bind_address=HOST,
                log_dest="stderr",
                run_as_user=self.service_user or getpass.getuser(),
                owner=self.service_user,
                bridge=self.bridge,
                central_site=self.central_site,
            )
        )

    def refresh_config(self) -> None:
        """Re-renders the config and re-copies the CRL and certificates from the PKI (after pki.py
        changed them); the running broker sees them after reload()."""
        self.conf_file = self._render()

    def mqtt_config(self, identity: str) -> dict[str, object]:
        """The `[mqtt]` section of a unit config (device/config.py) that talks to this broker."""
        cert, key = self.cert_for(identity)
        return {
            "enabled": True,
            "host": self.host,
            "port": self.port,
            "topic_prefix": self.prefix,
            "tls": {"ca_file": str(self.ca_file), "cert_file": str(cert), "key_file": str(key)},
        }

    # Certificates ------------------------------------------------------------------------------
    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert_path

    def role_of(self, identity: str) -> Role:
        if identity in self.consumers:
            return "consumer"
        return "building" if self.central_site is not None else "unit"

    def cert_for(self, identity: str) -> tuple[Path, Path]:
        """(cert_file, key_file) for an identity, issued by the broker's CA on first use."""
        if identity not in self._certs:
            role = self.role_of(identity)
            files = self.pki.client_files(identity, role)
            still_valid = any(c.identity == identity and c.revoked_at is None for c in self.pki.issued())
            if not (still_valid and files.cert.exists() and files.key.exists()):
                files = self.pki.issue_client(identity, role)
                if role != "consumer":
                    # Units and buildings have their own ACL block: a new one needs the ACL rendered
                    # again and, when the broker runs, reloaded.
                    self.refresh_config()
                    self.reload()
            self._certs[identity] = (files.cert, files.key)
        return self._certs[identity]

    def revoke(self, identity: str, *, reload: bool = True) -> None:
        """Revokes every certificate of identity, gives the broker the new CRL and (unless told not
        to) makes the running broker load it with SIGHUP."""
        self.pki.revoke(identity)
        self._certs.pop(identity, None)
        self.refresh_config()
        if reload:
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
        for _attempt in range(3):
            running_lines = self.log_count(RUNNING_MARKER)
            log_handle = self.log_file.open("ab")
            self._process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf_file)],
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log_handle.close()
            if self._wait_running(running_lines, timeout):
                self._port_is_free_choice = False
                return
            if not (self._port_is_free_choice and ADDRESS_IN_USE in self.log_tail(5)):
                break
            log.info("port %d was taken before mosquitto bound it; trying another", self.port)
            self.port = free_port()
            self.conf_file = self._render()
        self.kill()
        raise RuntimeError(f"mosquitto did not start on port {self.port}; log:\n{self.log_tail()}")

    def _wait_running(self, running_lines: int, timeout: float) -> bool:
        """True once this process logged that it runs (its listener is bound) and accepts TCP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            if self.log_count(RUNNING_MARKER) > running_lines:
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5):
                    return True
            time.sleep(0.02)
        return False

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
        # There is no acknowledgement of a reload; wait for its log line.
        marker = "Reloading config."
        before = self.log_count(marker)
        os.kill(self._process.pid, signal.SIGHUP)
        # Generous: on a loaded two-core machine the broker can take seconds to get to the signal.
        deadline = time.monotonic() + 20.0
        while self.log_count(marker) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not log a reload; log:\n{self.log_tail()}")
            time.sleep(0.02)

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

    def log_count(self, text: str) -> int:
        """How often `text` occurs in the broker's log so far (tests wait for a refusal's reason)."""
        return self.log_file.read_bytes().count(text.encode()) if self.log_file.exists() else 0

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.stop()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def mqtt_block(broker: LocalBroker, unit: str) -> str:
    """The unit config's [mqtt] section (with [mqtt.tls]) for this broker, as TOML."""
    section = broker.mqtt_config(unit)
    tls = section.pop("tls")
    assert isinstance(tls, dict)
    lines = ["[mqtt]", *(f"{key} = {_toml_value(value)}" for key, value in section.items())]
    lines += ['outbox_path = "state/outbox.db"']
    # A development machine's kernel often never hears that NTP set the clock (containers, VMs whose
    # host keeps the time), and the unit would refuse every command; an installed unit keeps the check.
    lines += ["# development only: commands are taken without the kernel's word that NTP set the clock"]
    lines += ['clock_check = "off"', "", "[mqtt.tls]"]
    # Absolute: the unit's config lives elsewhere, and its relative paths are relative to itself.
    lines += [f"{key} = {_toml_value(Path(str(value)).resolve())}" for key, value in tls.items()]
    return "\n".join(lines) + "\n"


def write_unit_block(broker: LocalBroker, unit: str) -> Path:
    path = broker.root / f"{unit}.mqtt.toml"
    path.write_text(mqtt_block(broker, unit))
    return path


def write_tail_script(broker: LocalBroker, unit: str) -> Path:
    """A one-line script running `device events tail` with the `tail` consumer's certificate; it checks
    signatures against ``unit-keys.json`` beside it (`device events key --register` adds a unit)."""
    cert, key = broker.cert_for("tail")
    device = Path(sys.executable).with_name("device")
    command = [
        str(device) if device.exists() else "device", "events", "tail",
        "--host", broker.host, "--port", str(broker.port), "--ca", str(broker.ca_file.resolve()),
        "--cert", str(cert.resolve()), "--key", str(key.resolve()), "--prefix", broker.prefix, "--unit", unit,
        "--keys", str((broker.root / "unit-keys.json").resolve()),
    ]  # fmt: skip
    path = broker.root / "tail.sh"
    path.write_text(" ".join(shlex.quote(part) for part in command) + ' "$@"\n')
    return path


def write_door_script(broker: LocalBroker, unit: str) -> Path:
    """A script running the reference door consumer (`device door`) with the `door` certificate, its
    audit beside it and gpiozero's mock pins (no relay on a development machine: the printed lines say
    what the relay would have done). Its first run makes the audit (`--start-fresh`); later runs use it."""
    cert, key = broker.cert_for("door")
    device = Path(sys.executable).with_name("device")
    audit = (broker.root / "door-audit.jsonl").resolve()
    command = [
        str(device) if device.exists() else "device", "door",
        "--host", broker.host, "--port", str(broker.port), "--ca", str(broker.ca_file.resolve()),
        "--cert", str(cert.resolve()), "--key", str(key.resolve()), "--prefix", broker.prefix, "--unit", unit,
        "--keys", str((broker.root / "unit-keys.json").resolve()),
        "--relay-gpio", "17", "--audit", str(audit),
    ]  # fmt: skip
    registry = broker.root / "unit-keys.json"
    if not registry.exists():  # the door reads it at start; `device events key --register` fills it
        registry.write_text('{\n  "units": {}\n}\n')
    path = broker.root / "door.sh"
    path.write_text(
        f'[ -e {shlex.quote(str(audit))} ] || set -- --start-fresh "$@"\n'
        "GPIOZERO_PIN_FACTORY=mock exec " + " ".join(shlex.quote(part) for part in command) + ' "$@"\n'
    )
    return path


def _bridge_from_args(args: argparse.Namespace) -> BridgeSettings | None:
    """--bridge-to HOST:PORT with --building ID and --bridge-pki (the central PKI directory, local use)."""
    if args.bridge_to is None:
        return None
    host, _, port = args.bridge_to.rpartition(":")
    if not host or not port.isdigit() or args.building is None or args.bridge_pki is None:
        raise SystemExit("error: --bridge-to HOST:PORT needs --building ID and --bridge-pki DIR")
    files = Pki(args.bridge_pki).client_files(args.building, "building")
    return BridgeSettings(
        building=args.building,
        central_host=host,
        central_port=int(port),
        ca_file=Pki(args.bridge_pki).ca_cert_path.resolve(),
        cert_file=files.cert.resolve(),
        key_file=files.key.resolve(),
        site=args.site,
        restart_timeout=(1, 5),  # local: the link comes back within seconds of the central broker
    )


RUNNING_FILE = "running.lock"


def claim_broker_dir(root: Path) -> IO[str] | str:
    """Holds an exclusive lock on ``root`` for as long as this process runs (the kernel drops it when
    the process ends, however it ends); a second broker on the same directory gets back what the first
    wrote into the lock file (its pid and port) instead of the handle."""
    root.mkdir(parents=True, exist_ok=True)
    handle = (root / RUNNING_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "starting"
        handle.close()
        return holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def port_in_use(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
        return True
    return False


def note_port(claim: IO[str], port: int) -> None:
    claim.seek(0)
    claim.truncate()
    claim.write(f"pid {os.getpid()}, port {port}")
    claim.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run a local Mosquitto with the fleet config (foreground)")
    parser.add_argument("--dir", type=Path, required=True, help="PKI, config and data (made once, reused)")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--prefix", default="entrance")
    parser.add_argument("--unit", action="append", default=[], help="issue a unit certificate (repeatable)")
    parser.add_argument(
        "--consumer", action="append", default=[], help="consumer identity (default backend, tail)"
    )
    many = parser.add_argument_group("many buildings (deploy/broker/bridge.py)")
    many.add_argument("--central", metavar="SITE", default=None, help="be the central broker of SITE")
    many.add_argument(
        "--building",
        action="append",
        default=[],
        help="central: issue a building certificate; with --bridge-to: this building's id",
    )
    many.add_argument("--bridge-to", metavar="HOST:PORT", default=None, help="bridge to the central broker")
    many.add_argument("--bridge-pki", type=Path, default=None, help="the central broker's PKI directory")
    many.add_argument("--site", default="site", help="the central broker's first topic level")
    args = parser.parse_args(argv)
    if args.bridge_to is not None:
        args.building = args.building[-1] if args.building else None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    claim = claim_broker_dir(args.dir)
    if isinstance(claim, str):
        print(
            f"error: a broker is already running from {args.dir} ({claim}); use that one, "
            "or stop it (Ctrl-C in its terminal) before starting another",
            file=sys.stderr,
        )
        return 1
    if args.port is not None and port_in_use(args.port):
        print(
            f"error: port {args.port} on {HOST} is taken (a broker started from another directory?); "
            "stop it or pick another port (make dev-broker DEV_BROKER_PORT=...)",
            file=sys.stderr,
        )
        return 1
    broker = LocalBroker(
        args.dir,
        prefix=args.prefix,
        port=args.port,
        consumers=tuple(args.consumer) or DEFAULT_CONSUMERS,
        bridge=_bridge_from_args(args),
        central_site=args.central,
    )
    buildings = args.building if args.central is not None else []
    for identity in [*args.unit, *buildings, *broker.consumers]:
        cert, key = broker.cert_for(identity)
        print(f"{broker.role_of(identity):9} {identity}: cert {cert} key {key}")
    broker.start()
    note_port(claim, broker.port)
    for unit in args.unit:
        block = write_unit_block(broker, unit)
        print(f"\n[mqtt] block for unit {unit} (also in {block}; `device init --mqtt {block}` uses it):")
        print(block.read_text(), end="")
    if args.central is None and "tail" in broker.consumers:
        tail = write_tail_script(broker, args.unit[0] if len(args.unit) == 1 else "+")
        print(f"\nevents as a consumer sees them: sh {tail}\n  ({tail.read_text().strip()})")
    if args.central is None and "door" in broker.consumers and len(args.unit) == 1:
        door = write_door_script(broker, args.unit[0])
        print(f"the reference door for unit {args.unit[0]} (mock relay): sh {door}")
    if broker.bridge is not None:
        print(
            f"bridged to {broker.bridge.central_host}:{broker.bridge.central_port}"
            f" as {broker.bridge.building}"
        )
    where = f"{broker.host}:{broker.port} (CA {broker.ca_file}, log {broker.log_file})"
    print(f"mosquitto on {where}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    try:
        while not stop.wait(0.5):
            if not broker.running:
                print(f"mosquitto exited; log:\n{broker.log_tail()}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
