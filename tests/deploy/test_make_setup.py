"""`make setup` shows progress: each step says what it does, and the long one (the locked packages) one
numbered line per package. Run for real in a scratch folder (the entry points linked, a fresh .venv) with
a one-package lock, so it takes seconds, not the minutes of the full lock."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINKED = ("Makefile", "pyproject.toml", "deploy", "device", "requirements", "README.md")


def one_pin(lock: str, name: str) -> str:
    """The lines of one pinned package (name==version and its hashes) from a lock file."""
    match = re.search(rf"^{name}==.*?(?=^\S)", lock, flags=re.MULTILINE | re.DOTALL)
    assert match is not None
    return match.group(0)


@pytest.mark.slow
def test_make_setup_says_each_step_and_counts_the_packages(tmp_path: Path) -> None:
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "small.lock").write_text(one_pin((REPO / "requirements/dev.lock").read_text(), "iniconfig"))
    result = subprocess.run(
        ["make", "setup", "LOCKS=small.lock"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line for line in lines if line.startswith("setup ")]
    assert steps == [
        "setup [1/4] system packages (deploy/dev/system-packages.sh)",
        "setup [2/4] virtual environment .venv and pip",
        "setup [3/4] 1 locked packages from small.lock (a few minutes the first time)",
        "setup [4/4] this project, editable",
        "setup done: .venv/bin/device",
    ]
    package = lines.index(steps[2]) + 1
    assert re.fullmatch(r"  1/1 iniconfig==[0-9.]+", lines[package])
    assert (tmp_path / ".venv/bin/device").exists()

    again = subprocess.run(
        ["make", "setup", "LOCKS=small.lock"], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0 and "setup [" not in again.stdout  # up to date: nothing to do
