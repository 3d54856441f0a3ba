"""README "Many buildings", run verbatim: two real Mosquittos (central, and building north bridged to it),
two archivers in one share group, two simulated units and the history, each fenced block as written, in a
scratch folder with the repository's entry points linked in. Terminals 1-4 run in the background."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.deploy.test_readme_walkthrough import LINKED, REPO, Background

SECTION = "## Many buildings"


def section_blocks(readme: str) -> list[str]:
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.DOTALL)


def test_the_page_has_a_diagram_and_five_terminals() -> None:
    readme = (REPO / "README.md").read_text()
    page = readme[readme.index(SECTION) : readme.find("\n## ", readme.index(SECTION) + 1)]
    assert "```text" in page and "bridge" in page and "$share/archivers" in page and "PostgreSQL" in page
    assert len(section_blocks(readme)) == 5


@pytest.mark.slow
def test_many_buildings_page_runs_on_one_machine_with_two_brokers(tmp_path: Path) -> None:
    from broker import free_port

    blocks = section_blocks((REPO / "README.md").read_text())
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    env = {
        **{k: v for k, v in os.environ.items() if k != "ENTRANCE_CAMERA_CONFIG"},
        "CENTRAL_PORT": str(free_port()),
        "NORTH_PORT": str(free_port()),
    }
    running: list[Background] = []
    try:
        readiness = ["Ctrl-C stops", "Ctrl-C stops", "listening on", "listening on"]
        for block, ready in zip(blocks[:4], readiness, strict=True):
            terminal = Background(block, tmp_path, env)
            running.append(terminal)
            assert terminal.wait_for(ready, 60), "".join(terminal.lines)
        assert any("bridged to" in line for line in running[1].lines)
        units = subprocess.run(
            ["bash", "-e", "-c", blocks[4]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert units.returncode == 0, units.stdout + units.stderr
    finally:
        for terminal in reversed(running):
            terminal.stop()
    summary = json.loads(units.stdout.splitlines()[0])
    assert summary["delivered"] is True
    history = units.stdout.splitlines()[1:]
    assert history and all(" lobby-1 #" in line for line in history)
    assert history[-1].split()[3:5] == ["subject_forgotten", "subject=(forgotten)"]
    assert "s-anna" not in units.stdout
    # Every event each unit committed is in the archive exactly once, and both archivers took a share.
    with sqlite3.connect(tmp_path / "state/fleet/archive.db") as db:
        rows = db.execute("SELECT unit, seq FROM access_log").fetchall()
    expected = {(unit, seq) for unit, count in summary["committed"].items() for seq in range(1, count + 1)}
    assert sorted(rows) == sorted(expected)
    archivers = [json.loads(t.lines[-1]) for t in running[2:4]]
    assert all(counts["stored"] > 0 and counts["rejected"] == 0 for counts in archivers), archivers
    assert sum(counts["stored"] for counts in archivers) == len(expected)
