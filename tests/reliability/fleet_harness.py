"""Many buildings under faults, measured: simulated units (the unit's own MqttPublisher and SQLite outbox)
publish to a building Mosquitto bridged to a central Mosquitto; archivers (`device events archive`, real
processes) share one subscription group on the central broker and write one SQLite archive.

Faults: the bridge's TCP link is cut (a loopback relay between the two brokers drops every connection
and refuses new ones) for ``cut_s``; the central broker is restarted once (SIGTERM, start); one archiver
is SIGKILLed and started again with its client id (as systemd's Restart= would).

Every number comes from what the units' outboxes committed and what the archive holds:
- lost: (unit, seq) committed by a unit and not in the archive at the end;
- duplicate_rows: rows minus distinct event ids (the (unit, seq) key makes a second row impossible;
  counted anyway, from the table);
- latency: archive time minus the event's own time, per row (one clock: one machine);
- bridge_backlog_peak: the largest number of events the building broker had acknowledged (gone from
  the outboxes) that were not yet in the archive, sampled every 0.2 s: what the bridge and the central
  broker were holding.

Used by `make fleet-bench` (tests/reliability/fleet_bench.py: 100 units, 30 s cut) and the short CI
version (tests/reliability/test_fleet_fast.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.broker.bridge import BridgeSettings
from deploy.broker.local import HOST, LocalBroker, free_port
from device.consumers.archive import Archive
from device.lab.fleetsim import SimUnit, drain, run_visits, sim_config, start_units

SITE = "site"
BUILDING = "north"
GROUP = "archivers"
ARCHIVE_IDENTITY = "archive"


class LinkRelay:
    """A TCP relay on loopback between the building's bridge and the central broker; ``cut()`` drops
    every connection and refuses new ones until ``restore()``: a link cut that neither broker notices
    except by losing its peer."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        listener.settimeout(0.2)
        return listener

    def _serve(self) -> None:
        while not self._stop:
            if not self._open.is_set():
                time.sleep(0.05)
                continue
            if self._listener is None:
                self._listener = self._listen()
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            source.settimeout(None)
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop = True
        self.cut()


@dataclass
class Archiver:
    index: int
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> dict[str, Any]:
        """SIGINT: the archiver prints its counts as one JSON line and exits."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def listening(self) -> bool:
        return self.log.exists() and self.log.read_text(errors="replace").count("archive listening on") > 0


def wait_until(predicate: Any, timeout_s: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def archive_rows(db: str) -> list[tuple[str, int, str, float, float]]:
    archive = Archive.open(db)
    try:
        rows = archive._run("SELECT unit, seq, event_id, ts_epoch, stored_at FROM access_log").fetchall()
        archive._db.commit()
    finally:
        archive.close()
    return [(str(r[0]), int(r[1]), str(r[2]), float(r[3]), float(r[4])) for r in rows]


class Counter:
    """One reader connection to the archive for the sampler and the final wait."""

    def __init__(self, db: str) -> None:
        self._archive = Archive.open(db)

    def __call__(self) -> int:
        return self._archive.count()

    def close(self) -> None:
        self._archive.close()


def archiver_command(
    central: LocalBroker, cert: Path, key: Path, registry: Path, db: str, client_id: str
) -> list[str]:
    """`device events archive` in the shared group, with a persistent session under ``client_id`` (none
    when it is empty: a clean session the broker forgets when the connection drops)."""
    device = str(Path(sys.executable).with_name("device"))
    session = ["--client-id", client_id, "--session-expiry", "600"] if client_id else []
    return [
        device, "events", "archive", "--host", HOST, "--port", str(central.port),
        "--ca", str(central.ca_file), "--cert", str(cert), "--key", str(key),
        "--prefix", f"{SITE}/+/entrance", "--keys", str(registry), "--share", GROUP,
        "--db", db, *session,
    ]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def run_fleet(
    root: Path,
    *,
    units: int,
    rate: float,
    duration_s: float,
    cut_s: float,
    archivers: int = 3,
    settle_s: float = 120.0,
    restart_killed: bool = True,
    persistent: bool = True,
    db: str = "",
) -> dict[str, Any]:
    """The scenario; returns the measured summary (``ok``: 0 lost, 0 duplicate rows, 0 rejected)."""
    central = LocalBroker(root / "central", central_site=SITE, consumers=(ARCHIVE_IDENTITY,))
    central.start()
    relay = LinkRelay(central.port)
    building_cert, building_key = central.cert_for(BUILDING)
    bridge = BridgeSettings(
        BUILDING, HOST, relay.port, central.ca_file, building_cert, building_key, restart_timeout=(1, 2)
    )
    building = LocalBroker(root / "building", bridge=bridge, consumers=("backend",))
    names = [f"u-{i:03d}" for i in range(units)]
    for name in names:
        building.cert_for(name)  # before start: one ACL rendering, no reloads
    building.start()
    registry = root / "unit-keys.json"
    db = db or str(root / "archive.db")  # or postgresql://...: the central archive
    count = Counter(db)  # makes the tables before the archivers race to
    cert, key = central.cert_for(ARCHIVE_IDENTITY)
    processes = [
        Archiver(
            i, archiver_command(central, cert, key, registry, db, f"archive-{i}"), root / f"archiver-{i}.log"
        )
        for i in range(archivers)
    ]
    sims: list[SimUnit] = []
    timeline: dict[str, float] = {}
    backlog_peak = 0
    sampling = threading.Event()
    try:
        configs = [sim_config(name, building.mqtt_config(name), root / "units") for name in names]
        sims = start_units(configs, registry)
        for archiver in processes:
            archiver.start()
        if not wait_until(lambda: all(a.listening() for a in processes), 30):
            raise RuntimeError("archivers did not subscribe: " + processes[0].log.read_text(errors="replace"))
        if not wait_until(lambda: all(s.publisher.health_snapshot()["mqtt"]["connected"] for s in sims), 60):
            raise RuntimeError("units did not connect to the building broker")

        def sample() -> None:
            nonlocal backlog_peak
            while not sampling.wait(0.2):
                acked = sum(s.committed - s.depth() for s in sims)
                backlog_peak = max(backlog_peak, acked - count())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()

        def faults() -> None:
            time.sleep(duration_s * 0.15)
            timeline["cut_at_s"] = time.monotonic() - start
            relay.cut()
            time.sleep(cut_s)
            relay.restore()
            timeline["restored_at_s"] = time.monotonic() - start
            time.sleep(duration_s * 0.1)
            processes[0].kill()
            timeline["archiver_killed_at_s"] = time.monotonic() - start
            time.sleep(2.0)
            if restart_killed:
                processes[0].start()
            time.sleep(duration_s * 0.1)
            central.stop()
            timeline["central_stopped_at_s"] = time.monotonic() - start
            central.start()
            timeline["central_started_at_s"] = time.monotonic() - start

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        visits = run_visits(sims, rate, duration_s)
        sent_for_s = time.monotonic() - start
        fault_thread.join()
        drained = drain(sims, settle_s)
        committed = sum(s.committed for s in sims)
        sent_all_s = time.monotonic() - start
        complete = wait_until(lambda: count() >= committed, settle_s, 0.2)
        caught_up_s = time.monotonic() - start
        time.sleep(1.0)  # anything still arriving late would show up as a duplicate attempt, not a row
        finished_s = time.monotonic() - start
    finally:
        sampling.set()
        count.close()
        counts = [archiver.stop() for archiver in processes if archiver.process is not None]
        for sim in sims:
            sim.publisher.close()
        building.stop()
        relay.close()
        central.stop()
    rows = archive_rows(db)
    expected = {(s.config.unit.id, seq) for s in sims for seq in range(1, s.committed + 1)}
    stored = {(unit, seq) for unit, seq, *_ in rows}
    latencies = [stored_at - ts for *_, ts, stored_at in rows]
    summary: dict[str, Any] = {
        "units": units,
        "rate_per_unit": rate,
        "visits_s": round(sent_for_s, 1),
        "events_committed": committed,
        "events_archived": len(rows),
        "lost": len(expected - stored),
        "unexpected": len(stored - expected),
        "duplicate_rows": len(rows) - len({event_id for _, _, event_id, *_ in rows}),
        "redeliveries_absorbed": sum(int(c.get("already_stored", 0)) for c in counts),
        "rejected": sum(int(c.get("rejected", 0)) for c in counts),
        "per_archiver_stored": [int(c.get("stored", 0)) for c in counts],
        "events_per_s_sustained": round(len(rows) / finished_s, 1),
        "archive_caught_up_after_s": round(caught_up_s - sent_all_s, 1) if complete else None,
        "db": "postgresql" if db.startswith("postgresql://") else "sqlite",
        "offered_events_per_s": round(visits / sent_for_s, 1),
        "latency_p50_s": round(percentile(latencies, 0.5), 3),
        "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies, default=0.0), 3),
        "bridge_backlog_peak": backlog_peak,
        "cut_s": cut_s,
        "timeline_s": {name: round(value, 1) for name, value in timeline.items()},
        "outboxes_drained": drained,
        "archive_complete": complete,
    }
    summary["ok"] = (
        summary["lost"] == 0
        and summary["duplicate_rows"] == 0
        and summary["unexpected"] == 0
        and summary["rejected"] == 0
        and drained
    )
    return summary


def main_env() -> None:
    """Quiet children: the archivers log their own lines to their log files."""
    os.environ.pop("ENTRANCE_CAMERA_CONFIG", None)
