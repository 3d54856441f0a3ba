"""``device run`` as systemd runs it: a real process, real models, a clip as the camera, signals."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gallery_helpers import init_unit
from pipeline_support import MODELS as REPO_MODELS
from pipeline_support import entrance_clip, shipped_stages
from tamper_support import flip_one_bit

from device.cli import main
from device.lab.democlip import DemoClip
from device.vision.faces import FaceAnalyzer

STARTUP_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> DemoClip:
    analyzer = FaceAnalyzer.from_stages(shipped_stages())
    path = tmp_path_factory.mktemp("run-clip") / "visitor.avi"
    return entrance_clip(path, analyzer, [("visitor", "biden.jpg")])


def unit_with_camera(tmp_path: Path, clip: Path, *, loop: bool, realtime: bool) -> Path:
    unit = init_unit(tmp_path)
    with unit.config_path.open("a") as config:
        config.write(
            f'\n[capture]\nbackend = "file"\nsource = "{clip}"\nloop = {str(loop).lower()}\n'
            f"realtime = {str(realtime).lower()}\n"
        )
    return unit.config_path


def start_unit(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_with_sigterm(process: subprocess.Popen[str]) -> int:
    """What systemd does to stop the unit; the exit code it ends with."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def kill_if_running(process: subprocess.Popen[str]) -> None:
    """After a failed assertion: never leave a unit running behind the test."""
    if process.poll() is None:
        process.kill()
        process.wait()


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify datagram received so far, one ``KEY=value`` line each."""
    lines = []
    while True:
        try:
            lines += sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            return lines


def next_line(process: subprocess.Popen[str], timeout_s: float) -> str | None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            return process.stdout.readline()
        if process.poll() is not None:
            return None
    return None


def listening_sockets_of(pid: int) -> list[str]:
    """Every listening TCP/UDP socket and every listening UNIX socket owned by ``pid``."""
    lines = []
    for flags in ("-ltnup", "-lxp"):
        result = subprocess.run(["ss", flags], capture_output=True, text=True, check=True)
        lines += [line for line in result.stdout.splitlines() if f"pid={pid}," in line]
    return lines


@pytest.mark.slow
def test_run_decides_listens_on_no_port_and_stops_cleanly_on_sigterm(clip: DemoClip, tmp_path: Path) -> None:
    config = unit_with_camera(tmp_path, clip.path, loop=True, realtime=True)
    # Plays systemd's part: the socket systemd would read READY/WATCHDOG/STOPPING from.
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify.sock"))
    manager.setblocking(False)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    process = start_unit(config, env)
    try:
        line = next_line(process, STARTUP_TIMEOUT_S)
        assert line, "no decision from the running unit"
        decision = json.loads(line)
        assert decision["type"] == "unknown" and decision["subject"] is None
        assert decision["reasons"] == ["gallery_empty"]
        assert listening_sockets_of(process.pid) == []
        code = stop_with_sigterm(process)
    finally:
        kill_if_running(process)
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert "received SIGTERM: stopping" in stderr
    assert "Traceback" not in stderr
    # README: `run` ends with a summary line however it stops.
    assert re.fullmatch(
        r"stopped by SIGTERM: \d+ decisions? \(printed above; mqtt is disabled\)", stderr.splitlines()[-1]
    )
    readme = (REPO_MODELS.parent / "README.md").read_text()
    assert "`run` ends with a summary line however it stops (the end of the\nfile, SIGTERM, Ctrl-C)" in readme
    messages = notifications(manager)
    manager.close()
    assert "READY=1" in messages and "WATCHDOG=1" in messages
    assert messages.index("READY=1") < messages.index("STOPPING=1")


@pytest.mark.slow
def test_without_a_camera_the_unit_keeps_retrying_and_stops_on_sigterm(tmp_path: Path) -> None:
    unit = init_unit(tmp_path)
    with unit.config_path.open("a") as config:
        config.write('\n[capture]\nbackend = "opencv"\nsource = "/dev/video-missing"\n')
    process = start_unit(unit.config_path)
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        retries = 0
        while retries < 2 and time.monotonic() < deadline:  # two failed opens: it is retrying, alive
            line = process.stderr.readline()
            if not line:
                break
            retries += "camera unavailable" in line
        assert retries == 2
        assert process.poll() is None
        code = stop_with_sigterm(process)
    finally:
        kill_if_running(process)
    assert code == 0


@pytest.mark.slow
def test_without_a_master_key_the_unit_runs_in_no_gallery_mode_instead_of_crashing(
    clip: DemoClip, tmp_path: Path
) -> None:
    config = unit_with_camera(tmp_path, clip.path, loop=False, realtime=False)
    os.remove(config.parent / "secrets" / "master.key")
    result = subprocess.run(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [decision["reasons"] for decision in decisions] == [["no_gallery"]]
    assert "no gallery" in result.stderr and "Traceback" not in result.stderr


CAPTURE = '\n[capture]\nbackend = "file"\nsource = "CLIP"\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (CAPTURE.replace("CLIP", "/nonexistent/clip.avi"), "capture.source"),
        (CAPTURE + "framerate = 15\n", "capture.framerate: unknown key"),
        (CAPTURE + "fps = -3\n", "capture.fps = -3"),
        (CAPTURE + '[models]\ndir = "/nonexistent"\n', "cannot load the models"),
    ],
)
def test_problems_a_restart_cannot_fix_exit_2_with_a_clear_message(
    extra: str, message: str, clip: DemoClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = init_unit(tmp_path)
    text = unit.config_path.read_text()
    if "[models]" in extra:  # replace init's own [models] table rather than defining it twice
        text = text.split("[models]")[0]
    unit.config_path.write_text(text + extra.replace("CLIP", str(clip.path)))
    capsys.readouterr()
    assert main(["run", "--config", str(unit.config_path)]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_mqtt_enabled_without_the_tls_files_is_a_clear_startup_error(
    clip: DemoClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = init_unit(tmp_path)
    text = unit.config_path.read_text().replace("[mqtt]\n", '[mqtt]\nenabled = true\nhost = "127.0.0.1"\n')
    unit.config_path.write_text(text + CAPTURE.replace("CLIP", str(clip.path)))
    capsys.readouterr()
    assert main(["run", "--config", str(unit.config_path)]) == 2
    stderr = capsys.readouterr().err
    assert "error: mqtt:" in stderr and "tls" in stderr.lower()
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_tampered_model_file_stops_the_unit_with_exit_2(
    clip: DemoClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: the unit refuses a model whose sha256 differs from the manifest (a restart cannot fix it)."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(REPO_MODELS, models)
    victim = next(models.rglob("*_float*.tflite"))
    flip_one_bit(victim)
    unit = init_unit(tmp_path)
    text = unit.config_path.read_text().split("[models]")[0]
    unit.config_path.write_text(
        text + f'[models]\ndir = "{models}"\n' + CAPTURE.replace("CLIP", str(clip.path))
    )
    capsys.readouterr()
    assert main(["run", "--config", str(unit.config_path)]) == 2
    stderr = capsys.readouterr().err
    assert "sha256" in stderr and victim.name in stderr
    assert "Traceback" not in stderr
