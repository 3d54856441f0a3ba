"""Every layer's fixable problem reaches the user the same way: one ``error:`` line on stderr, the error's
own exit code, never a traceback (``device.errors.UserError``, caught once in ``device.cli.main``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device.errors import EXIT_FAILURE, EXIT_USAGE, UserError


def device(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def empty_models(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    config = tmp_path / "unit.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    return config


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_picture_that_is_not_one(tmp_path: Path) -> None:
    picture = tmp_path / "x.jpg"
    picture.write_text("not an image")
    result = device("detect", str(picture))
    assert (result.returncode, result.stderr.splitlines()) == (
        EXIT_FAILURE,
        [f"error: {picture}: not a decodable image (not a jpeg, png, bmp or webp picture)"],
    )


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_model_folder_without_its_manifest(empty_models: Path, tmp_path: Path) -> None:
    picture = tmp_path / "x.jpg"
    picture.write_bytes(b"")
    result = device("--config", str(empty_models), "detect", str(picture))
    assert result.returncode == EXIT_FAILURE
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")


def test_a_unit_that_cannot_start_says_so_with_the_usage_code(empty_models: Path) -> None:
    result = device("--config", str(empty_models), "bench", "--repeats", "1")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [f"error: cannot load the models: no model manifest at "
                                          f"{empty_models.parent / 'models' / 'manifest.json'}"]  # fmt: skip


def test_a_user_error_from_any_layer_is_one_line_and_its_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from device import cli

    class RefusedError(UserError):
        exit_code = 7

    def handler(_args: object) -> int:
        raise RefusedError("the key file is readable by others")

    parser = cli.build_parser()
    parser.set_defaults(handler=handler)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 7
    assert capsys.readouterr().err == "error: the key file is readable by others\n"
