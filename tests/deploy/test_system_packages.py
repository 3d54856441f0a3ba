"""deploy/dev/system-packages.sh waits for the package manager's lock instead of failing at once.

The script runs for real with a PATH holding only what it needs, so the packages it checks for by
command (npm, strace, g++) are missing and it goes on to apt-get, here a fake that records its call. The
lock is a POSIX (fcntl) lock, the kind dpkg and apt take, held by another process on a temp file the
script is pointed to with DPKG_LOCK_FILES."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "dev" / "system-packages.sh"
HOLD_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "a")
fcntl.lockf(handle, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # held until the test closes stdin
"""


@pytest.fixture
def fake_path(tmp_path: Path) -> Path:
    """A bin folder with the tools the script uses and a recording apt-get, nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "sleep", "env", "dpkg"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "apt-calls"}\n')
    apt.chmod(0o755)
    return bin_dir


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    lock = tmp_path / "lock-frontend"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield lock, holder
    if holder.poll() is None:
        holder.kill()
        holder.wait()


def run_script(bin_dir: Path, lock: Path, timeout_s: int) -> subprocess.Popen[str]:
    env = {"PATH": str(bin_dir), "DPKG_LOCK_FILES": str(lock), "DPKG_LOCK_TIMEOUT_S": str(timeout_s)}
    return subprocess.Popen(
        ["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def apt_calls(tmp_path: Path) -> list[str]:
    calls = tmp_path / "apt-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the script asks sudo for apt-get when not root")


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_it_waits_while_the_lock_is_held_then_installs(
    tmp_path: Path, fake_path: Path, held_lock: tuple[Path, subprocess.Popen[str]]
) -> None:
    skip_unless_root()
    lock, holder = held_lock
    script = run_script(fake_path, lock, timeout_s=120)
    assert script.stdout is not None
    lines: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        assert script.stdout is not None
        for line in script.stdout:
            lines.append(line)
            if line.startswith("waiting for the package manager"):
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert waiting.wait(30), lines
    assert f"process {holder.pid} holds {lock}" in lines[0]
    time.sleep(1.5)  # not a wait for state: the script must still be waiting some time later
    assert script.poll() is None and apt_calls(tmp_path) == []

    assert holder.stdin is not None
    holder.stdin.close()  # the other package manager finishes
    holder.wait(10)
    assert script.wait(30) == 0, script.stderr.read() if script.stderr else ""
    reader.join(10)
    assert any(line.startswith("installing system packages: ") for line in lines)
    update, install = apt_calls(tmp_path)
    assert update == "-o DPkg::Lock::Timeout=120 update -q"
    assert install.startswith("-o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends ")
    assert {"npm", "strace", "g++"} <= set(install.split())


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_it_gives_up_with_a_clear_message_after_its_timeout(
    tmp_path: Path, fake_path: Path, held_lock: tuple[Path, subprocess.Popen[str]]
) -> None:
    skip_unless_root()
    lock, holder = held_lock
    script = run_script(fake_path, lock, timeout_s=2)
    _, err = script.communicate(timeout=60)
    assert script.returncode == 1
    busy = f"error: the package manager is still busy after 2 s (process {holder.pid} holds {lock});"
    assert err.startswith(busy)
    assert "run make setup again" in err
    assert apt_calls(tmp_path) == []
    assert holder.poll() is None  # the holder is left alone


def test_without_a_held_lock_it_goes_straight_on(tmp_path: Path, fake_path: Path) -> None:
    skip_unless_root()
    script = run_script(fake_path, tmp_path / "no-such-lock", timeout_s=120)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    assert "waiting" not in out and len(apt_calls(tmp_path)) == 2
