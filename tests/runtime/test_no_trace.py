"""Unknown faces leave no trace: the real unit (``device run``, real models, real encrypted gallery with a
resident enrolled) watches 1,000 frames of people who are not enrolled while strace records every file
the process and its threads create, open for writing, rename, link or delete. The unit publishes as in
production: MQTT over TLS to a real Mosquitto through its SQLite outbox. Nothing may be written but the
outbox (its database, WAL and shared-memory files); no crop, template, id or log file appears anywhere.
A before/after scan of the unit, the working and the temp directory backs the trace up, and a consumer
checks that the events did arrive and name nobody.

Startup writes that have nothing to do with faces are made before tracing starts: the CPU variant choice
cache (written once per machine by the accelerator at first start) is warmed by building the clip.
Python's bytecode cache is switched off (code, not data; the unit ships compiled packages).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gallery_helpers import Unit, init_unit
from mqtt_probe import connect_probe

from device.config import load_config
from device.evaluation.fixtures import astronaut_rgb, load_rgb
from device.identity.gallery_store import EnrolRequest
from device.lab.democlip import ClipError, Walk, make_clip
from device.vision.faces import FaceAnalyzer, load_stages
from device.vision.liveness import open_liveness

FRAMES = 1000
WALK_FRAMES = 45
EMPTY_FRAMES = 10
TRACED_CALLS = (
    "open,openat,creat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,"
    "link,linkat,symlink,symlinkat,truncate"
)
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
ALWAYS_HARMLESS = ("/dev/null", "/dev/tty")  # no data lands in either
FAILED = re.compile(r"\)\s+=\s+-1\s+E[A-Z]+")  # the call failed: nothing was created or changed
CALL_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)$")
PATH_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class FileEvent:
    call: str
    paths: tuple[str, ...]
    line: str


def file_writes(trace: str) -> list[FileEvent]:
    """Every traced call that could leave something on disk (opens for reading are left out)."""
    events = []
    for line in trace.splitlines():
        found = CALL_LINE.match(line)
        if found is None or "resumed>" in line or FAILED.search(line):
            continue
        call, args = found["call"], found["args"]
        paths = tuple(PATH_ARG.findall(args))
        if call in ("open", "openat", "creat"):
            if call != "creat" and not any(flag in args for flag in WRITE_FLAGS):
                continue
            if paths and paths[0] in ALWAYS_HARMLESS:
                continue
        events.append(FileEvent(call, paths, line))
    return events


def snapshot(*directories: Path) -> dict[Path, tuple[int, int]]:
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for directory in directories
        for path in directory.rglob("*")
    }


def stranger_walks() -> list[Walk]:
    photos = [("biden", load_rgb("biden.jpg"))]
    photos += [(f"sample{i}", load_rgb(f"sample{i}.jpg")) for i in range(1, 7)]
    photos.append(("astronaut", astronaut_rgb()))
    walks = []
    count = (FRAMES - EMPTY_FRAMES) // (WALK_FRAMES + EMPTY_FRAMES)
    for index in range(count):
        label, photo = photos[index % len(photos)]
        left = index % 2 == 0
        walks.append(
            Walk(
                f"{label}-{index}",
                photo,
                frames=WALK_FRAMES,
                start_x=0.25 if left else 0.75,
                end_x=0.45 if left else 0.55,
                start_face_px=90.0,
                end_face_px=160.0,
            )
        )
    return walks


@pytest.mark.skipif(sys.platform != "linux", reason="strace is Linux only")
@pytest.mark.slow
def test_a_thousand_frames_of_strangers_write_nothing_but_outbox_events(
    tmp_path: Path,
    face_images: dict[str, Path],
    mosquitto_broker: Any,
) -> None:
    strace = shutil.which("strace")
    assert strace is not None, "strace is needed: deploy/dev/system-packages.sh installs it"
    unit: Unit = init_unit(tmp_path)
    config = unit.config
    stages = load_stages(config, state_dir=config.unit.state_dir)  # warms the CPU variant cache
    open_liveness(config, state_dir=config.unit.state_dir)  # and the PAD models' (done at first start)
    analyzer = FaceAnalyzer(stages.detector, stages.embedder, stages.aligner)
    resident = [analyzer.analyze(load_rgb(name))[0].embedding for name in ("obama.jpg", "obama2.jpg")]
    unit.store().enrol(
        EnrolRequest("Resident", np.stack(resident), "F-1", operator="tester", purpose_version="v1")
    )
    detector = stages.detector
    walks = stranger_walks()
    try:
        clip = make_clip(
            tmp_path / "clip" / "strangers.avi", walks, detector.detect, empty_frames=EMPTY_FRAMES
        )
    except ClipError as error:
        pytest.fail(f"could not build the stranger clip: {error}")
    assert clip.frames >= FRAMES - EMPTY_FRAMES - WALK_FRAMES

    run_config = unit.dir / "run.toml"
    broker = mosquitto_broker
    cert, key = broker.cert_for(config.unit.id)
    mqtt = f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
    mqtt += f'topic_prefix = "{broker.prefix}"\n'
    run_config.write_text(
        unit.config_path.read_text().replace("[mqtt]\n", mqtt)
        + f'\n[capture]\nbackend = "file"\nsource = "{clip.path}"\nrealtime = false\n'
        + f'\n[mqtt.tls]\nca_file = "{broker.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    # The event signing key is made once at installation (the fleet playbook runs `device events key`
    # before it starts the service), not while strangers pass: make it before the traced run.
    from device.events.signing import EventKey
    from device.layout import StateLayout

    EventKey.load_or_create(StateLayout.from_config(load_config(run_config)).event_key)
    outbox = load_config(run_config).mqtt.outbox_path
    allowed = {str(outbox) + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    consumer = connect_probe(broker.host, broker.port, broker.ca_file, *broker.cert_for("backend"), "backend")
    events_topic = f"{broker.prefix}/{config.unit.id}/events"
    consumer.subscribe(events_topic)
    workdir, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    watched = (unit.dir, workdir, tmpdir, clip.path.parent)
    before = snapshot(*watched)
    gallery_before = config.gallery.path.read_bytes()
    trace_file = tmp_path / "trace" / "strace.log"
    trace_file.parent.mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmpdir)}
    result = subprocess.run(
        [strace, "-f", "-qq", "--seccomp-bpf", "-s", "4096", "-e", f"trace={TRACED_CALLS}",
         "-o", str(trace_file), sys.executable, "-m", "device", "--config", str(run_config), "run"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    writes = [w for w in file_writes(trace_file.read_text()) if not set(w.paths) <= allowed]
    report = "\n".join(w.line for w in writes[:20])
    assert writes == [], f"the unit wrote files other than its outbox while watching strangers:\n{report}"
    after = snapshot(*watched)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    # the state directory's own mtime changes when the outbox files appear in it
    assert {str(path) for path in changed} <= allowed | {str(outbox.parent)}, sorted(changed)
    assert config.gallery.path.read_bytes() == gallery_before

    # The run really looked at the strangers: one event per visit arrived, none names anybody.
    decided = len(re.findall(r"decision track=\d+ \w+", result.stderr))
    deadline = time.monotonic() + 20
    while len(consumer.messages) < decided and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.close()
    events = [json.loads(message.payload) for message in consumer.messages if message.topic == events_topic]
    kinds = Counter(event["type"] for event in events)
    assert len(events) == decided, (len(events), decided)
    assert kinds["unknown"] >= len(walks) * 0.7, kinds
    assert kinds["recognized"] == 0
    assert all(event["subject"] is None for event in events)
    leftover = b"".join(Path(name).read_bytes() for name in allowed if Path(name).exists())
    assert b"Resident" not in leftover  # the outbox holds events only, never a name
    trace_text = trace_file.read_text()
    assert '"' + str(clip.path) + '"' in trace_text  # the trace did cover the run's file activity


def test_the_trace_catches_a_write_rename_and_delete(tmp_path: Path) -> None:
    """The detector itself: a process that does write is caught (so an empty list above means something)."""
    strace = shutil.which("strace")
    assert strace is not None, "strace is needed: deploy/dev/system-packages.sh installs it"
    trace_file = tmp_path / "strace.log"
    script = (
        "import os, threading\n"
        "def work():\n"
        "    open('crop.bin', 'wb').write(b'x')\n"
        "    os.rename('crop.bin', 'kept.bin')\n"
        "    os.unlink('kept.bin')\n"
        "thread = threading.Thread(target=work); thread.start(); thread.join()\n"
    )
    subprocess.run(
        [strace, "-f", "-qq", "--seccomp-bpf", "-e", f"trace={TRACED_CALLS}", "-o", str(trace_file),
         sys.executable, "-c", script],
        cwd=tmp_path, check=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    caught = [(event.call, event.paths) for event in file_writes(trace_file.read_text())]
    assert ("openat", ("crop.bin",)) in caught
    assert ("rename", ("crop.bin", "kept.bin")) in caught
    assert ("unlink", ("kept.bin",)) in caught
