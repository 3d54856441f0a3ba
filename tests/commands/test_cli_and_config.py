from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device import __version__
from device.cli import main
from device.config import FileCapture, UnitConfig, config_json_schema, load_config

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


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
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


def test_a_file_camera_without_a_source_fails_config_check_not_start_up(tmp_path: Path) -> None:
    config = write(tmp_path / "unit.toml", '[capture]\nbackend = "file"\nrealtime = false\n')
    result = run_device("--config", str(config), "config", "check")
    assert result.returncode == 2
    assert "capture.source: required (video file or picture folder" in result.stderr
    assert "Traceback" not in result.stderr


CAPTURE_REFUSALS = [
    (
        'backend = "file"\nsource = ""',
        "capture.source = '': Value error, the file backend needs a video file",
    ),
    (
        'backend = "opencv"\nsource = "0"\nloop = true',
        'capture.loop: unknown key (only with backend = "file")',
    ),
    ('backend = "picamera2"\nrealtime = false', 'capture.realtime: unknown key (only with backend = "file")'),
    ('backend = "picamera2"\nsource = "0"', 'capture.source: unknown key (only with backend = "opencv" or'),
    ('source = "clip.mp4"', 'capture.source: unknown key (only with backend = "opencv" or'),  # default: Pi
    (
        'backend = "opencv"\nsource = "webcam please"',
        "capture.source = 'webcam please': Value error, expected",
    ),
]


@pytest.mark.parametrize(
    ("section", "message"), CAPTURE_REFUSALS, ids=[m.split(":")[0] for _, m in CAPTURE_REFUSALS]
)
def test_capture_keys_are_checked_against_their_backend(
    section: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "unit.toml", f"[capture]\n{section}\n")
    assert main(["config", "check", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "backend"),
    [
        ("", "picamera2"),  # no [capture] table: the unit's own camera
        ("[capture]\nrotation = 90\n", "picamera2"),
        ('[capture]\nbackend = "opencv"\n', "opencv"),
        ('[capture]\nbackend = "file"\nsource = "clip.mp4"\nloop = true\n', "file"),
    ],
)
def test_each_backend_takes_its_own_keys(
    section: str, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "unit.toml", section)
    assert main(["config", "check", "--config", str(config)]) == 0
    assert f"capture {backend}" in capsys.readouterr().out


def test_a_relative_file_source_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path / "unit.toml", '[capture]\nbackend = "file"\nsource = "clips/a.mp4"\n')
    )
    assert isinstance(config.capture, FileCapture)
    assert config.capture.source == tmp_path / "clips" / "a.mp4"


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
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
    assert shipped == config_json_schema()


@pytest.mark.parametrize(
    "example", sorted((REPO / "firmware_config" / "examples").glob("*.toml")), ids=lambda p: p.name
)
def test_example_configs_are_valid(example: Path) -> None:
    assert load_config(example).unit.id
