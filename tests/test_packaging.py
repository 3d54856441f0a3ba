from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def locked_packages(lock: Path) -> dict[str, list[str]]:
    """Package name -> versions pinned in a uv/pip-compile lock file."""
    pins: dict[str, list[str]] = {}
    for match in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock.read_text(), flags=re.MULTILINE):
        pins.setdefault(match.group(1).lower(), []).append(match.group(2))
    return pins


def test_every_locked_requirement_carries_hashes() -> None:
    for lock in (REPO / "requirements").glob("*.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.read_text())
        for block in blocks:
            if "==" in block.splitlines()[0]:
                assert "--hash=sha256:" in block, f"{lock.name}: no hash for {block.splitlines()[0]}"


def test_runtime_lock_pins_the_chosen_stack() -> None:
    pins = locked_packages(REPO / "requirements" / "runtime.lock")
    for name in (
        "numpy",
        "opencv-python-headless",
        "ai-edge-litert",
        "paho-mqtt",
        "pydantic",
        "cryptography",
    ):
        assert name in pins, name
    assert all(version.startswith("2.") for version in pins["paho-mqtt"])


def test_the_unrelated_pypi_pycoral_is_never_a_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(item for extra in project["optional-dependencies"].values() for item in extra),
    ]
    assert not any(re.match(r"pycoral\b", requirement) for requirement in declared)
    for lock in (REPO / "requirements").glob("*.lock"):
        assert "pycoral" not in locked_packages(lock)


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_hardware_libraries_are_not_imported_at_package_import() -> None:
    import subprocess
    import sys

    code = "import sys, device.cli; device.cli.build_parser(); print('picamera2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
def test_building_the_project_prints_no_deprecation_warning(tmp_path: Path) -> None:
    """`make setup` on a fresh clone stays quiet: the licence is an SPDX expression, not a TOML table."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--dry-run",
            "--quiet",
            "--no-cache-dir",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Warning" not in output and "deprecated" not in output, output
