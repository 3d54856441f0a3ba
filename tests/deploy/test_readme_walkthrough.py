"""README "First unit on a broker", run verbatim: the fenced blocks of that section, in order, in a
scratch copy of the repository's entry points (Makefile, .venv, deploy/ by symlink), against the real
Mosquitto that `make dev-broker` starts. Terminals 1, 2 and 4 (broker, events, door) run in the
background, terminal 3 to its end; the consumer in terminal 2 must then print the unit's event and the
door in terminal 4 its decision. Then terminal 3's second block, a command sent while the unit runs
again, must print the unit's answer, `applied`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTION = "## First unit on a broker"
LINKED = ("Makefile", ".venv", "deploy", "pyproject.toml", "requirements", "models")
TIMEOUT_S = 120.0


def walkthrough_blocks(readme: str) -> list[str]:
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


BROKER, TAIL, DOOR, UNIT, COMMAND = range(5)  # the section's blocks, in the README's order


def test_the_section_has_the_four_terminals_and_a_command() -> None:
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    assert [block.split()[0] for block in blocks] == [
        "make",
        "sh",
        "sh",
        ".venv/bin/device",
        ".venv/bin/device",
    ]
    assert blocks[DOOR].split() == ["sh", "state/dev-broker/door.sh"]
    assert blocks[COMMAND].split()[:3] == [".venv/bin/device", "command", "send"]


class Background:
    """A README block running in its own process group, its output collected line by line."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # A thread, not select(): readline() buffers past the line it returns, so select() on the pipe
        # can block while whole lines wait in Python's buffer.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return True
            if self.process.poll() is not None and not self._reader.is_alive():
                return False
            time.sleep(0.1)
        return any(text in line for line in list(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.mark.slow
def test_readme_walkthrough_puts_an_event_on_screen(tmp_path: Path) -> None:
    from broker import free_port

    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    env = {
        **{k: v for k, v in os.environ.items() if k != "ENTRANCE_CAMERA_CONFIG"},
        "DEV_BROKER_PORT": str(free_port()),  # make's `?=` default (8883) may be taken on a shared host
    }
    broker = Background(blocks[BROKER], tmp_path, env)
    tail: Background | None = None
    door: Background | None = None
    try:
        assert broker.wait_for("Ctrl-C stops", TIMEOUT_S), "".join(broker.lines)
        printed = "".join(broker.lines)
        assert (
            "[mqtt]" in printed and "[mqtt.tls]" in printed and "tail.sh" in printed and "door.sh" in printed
        )
        tail = Background(blocks[TAIL], tmp_path, env)
        assert tail.wait_for("listening on", 30), "".join(tail.lines)
        door = Background(blocks[DOOR], tmp_path, env)
        assert door.wait_for("door listening on", 30), "".join(door.lines)
        unit = subprocess.run(
            ["bash", "-e", "-c", blocks[UNIT]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert unit.returncode == 0, unit.stdout + unit.stderr
        assert "✗" not in unit.stdout and "all " in unit.stdout  # doctor passed
        assert "end of the file source: 1 decision; every event was delivered" in unit.stderr
        assert tail.wait_for(" demo-unit #1 unknown ", 30), "".join(tail.lines)
        assert door.wait_for("demo-unit #1 unknown: kept shut (type 'unknown' never opens)", 30), "".join(
            door.lines
        )
        assert "XNNPACK" not in unit.stderr
        command = subprocess.run(
            ["bash", "-e", "-c", blocks[COMMAND]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert command.returncode == 0, command.stdout + command.stderr
        assert "applied" in command.stdout.splitlines(), command.stdout + command.stderr
        assert tail.wait_for(" demo-unit #2 unknown ", 30), "".join(tail.lines)
    finally:
        for consumer in (tail, door):
            if consumer is not None:
                consumer.stop()
        broker.stop()


@pytest.mark.parametrize("identity", ["tail", "home-assistant"])
def test_the_status_line_names_files_dev_broker_makes(identity: str) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    assert f"state/dev-broker/pki/consumers/{identity}.crt" in section
    from deploy.broker.pki import Pki

    assert Pki(Path("state/dev-broker/pki")).client_files(identity, "consumer").cert == Path(
        f"state/dev-broker/pki/consumers/{identity}.crt"
    )


@pytest.mark.slow
def test_make_dev_broker_twice_says_one_is_running_and_issues_the_ha_certificate(tmp_path: Path) -> None:
    from broker import free_port

    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    port = free_port()
    env = {**os.environ, "DEV_BROKER_PORT": str(port)}
    first = Background("make dev-broker", tmp_path, env)
    try:
        assert first.wait_for("Ctrl-C stops", TIMEOUT_S), "".join(first.lines)
        # The README's Home Assistant page connects with this consumer certificate.
        assert "consumer  home-assistant: cert " in "".join(first.lines)
        assert (tmp_path / "state/dev-broker/pki/consumers/home-assistant.crt").exists()
        second = subprocess.run(
            ["make", "dev-broker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert second.returncode != 0
        assert "error: a broker is already running from state/dev-broker (pid " in second.stderr
        assert f"port {port})" in second.stderr and "Traceback" not in second.stderr
        # The same port from another directory: said plainly, not a Mosquitto log dump.
        other = tmp_path / "elsewhere"
        other.mkdir()
        for name in LINKED:
            (other / name).symlink_to(REPO / name)
        third = subprocess.run(
            ["make", "dev-broker"], cwd=other, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert third.returncode != 0
        assert f"error: port {port} on 127.0.0.1 is taken" in third.stderr and "Traceback" not in third.stderr
        assert first.process.poll() is None  # the first broker still runs
    finally:
        first.stop()
