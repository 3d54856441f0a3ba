from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device import __version__
from device.cli import main
from device.config import UnitConfig, load_config
from device.config_docs import described_schema

REPO = Path(__file__).resolve().parents[2]


def run_device(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device", *args], capture_output=True, text=True, timeout=60)


def test_version_is_the_installed_package_version() -> None:
    result = run_device("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"device {__version__}"
    assert __version__ != "0.0.0+unknown"


def test_help_lists_the_commands() -> None:
    result = run_device("--help")
    assert result.returncode == 0
    assert "fixtures" in result.stdout
    assert "config" in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "device"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_is_accepted_before_and_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "unit.toml", '[unit]\nid = "lobby-1"\n')
    assert main(["--config", str(config), "config", "check"]) == 0
    before = capsys.readouterr().out
    assert main(["config", "check", "--config", str(config)]) == 0
    after = capsys.readouterr().out
    assert before == after
    assert "lobby-1" in after


def test_a_bad_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = write(
        tmp_path / "bad.toml",
        '[unit]\nid = "Not A Valid Id"\n'
        '[capture]\nfps = -3\nbackend = "webcam"\n'
        "[matching]\nthreshhold = 0.5\n",
    )
    result = run_device("--config", str(config), "config", "check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for expected in ("unit.id", "capture.fps", "capture.backend", "matching.threshhold: unknown key"):
        assert expected in result.stderr
    assert "'webcam'" in result.stderr


def test_a_missing_or_malformed_config_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = run_device("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert missing.returncode == 2
    assert "cannot read the file" in missing.stderr
    broken = write(tmp_path / "broken.toml", "[unit\nid=")
    malformed = run_device("--config", str(broken), "config", "check")
    assert malformed.returncode == 2
    assert "not valid TOML" in malformed.stderr
    assert "Traceback" not in malformed.stderr


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "unit.toml", '[gallery]\npath = "state/g.db"\n'))
    assert config.gallery.path == tmp_path / "state" / "g.db"


def test_enrolment_expiry_cannot_exceed_three_years(tmp_path: Path) -> None:
    result = run_device(
        "--config",
        str(write(tmp_path / "u.toml", "[gallery]\ndefault_expiry_days = 2000\n")),
        "config",
        "check",
    )
    assert result.returncode == 2
    assert "gallery.default_expiry_days" in result.stderr


def test_shipped_defaults_file_equals_the_built_in_defaults() -> None:
    data = tomllib.loads((REPO / "firmware_config" / "unit.defaults.toml").read_text())
    assert UnitConfig.model_validate(data) == UnitConfig()


def test_shipped_schema_matches_the_config_model() -> None:
    shipped = json.loads((REPO / "firmware_config" / "unit-config.schema.json").read_text())
    assert shipped == described_schema()


@pytest.mark.parametrize(
    "example", sorted((REPO / "firmware_config" / "examples").glob("*.toml")), ids=lambda p: p.name
)
def test_example_configs_are_valid(example: Path) -> None:
    assert load_config(example).unit.id
