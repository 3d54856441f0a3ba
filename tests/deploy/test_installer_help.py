"""deploy/unit/install-unit.sh for an installer: a complete --help (every option the script parses) and a
--dry-run that works on any machine, saying plainly that without compiled Edge TPU files the unit runs on
the CPU (issue 17)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "deploy" / "unit" / "install-unit.sh"


def installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_option_the_script_parses() -> None:
    parsed = set(re.findall(r"^\s+(--[a-z-]+)(?:\|-h)?\)", INSTALLER.read_text(), flags=re.MULTILINE))
    assert {"--trust-coral-files", "--dry-run", "--coral-pair", "--unit-id"} <= parsed
    result = installer("--help")
    assert result.returncode == 0
    for option in parsed:
        assert re.search(rf"^\s+{re.escape(option)}\b", result.stdout, flags=re.MULTILINE), option
    assert result.stdout.rstrip().endswith(".")  # whole sentences, not cut mid-way
    assert "runs on the CPU" in result.stdout


def test_dry_run_works_on_an_x86_laptop_with_another_os(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=ubuntu\nVERSION_CODENAME=noble\n")
    result = installer(
        "--dry-run", "--machine", "x86_64", "--os-release", str(os_release), "--unit-id", "lobby-1"
    )
    assert result.returncode == 0, result.stderr
    assert "this machine is x86_64" in result.stdout and "plan for bookworm" in result.stdout
    assert "+ systemctl enable" in result.stdout
    assert "no compiled Edge TPU files: the unit runs on the CPU" in result.stdout


def test_a_bad_unit_id_is_explained_in_words() -> None:
    result = installer("--dry-run", "--unit-id", "Lobby 1")
    assert result.returncode == 1
    assert "lowercase letters, digits and '-'" in result.stderr and "^[" not in result.stderr
