"""`device selftest`: the TPU half runs isolated, and every way a pairing can break gets a verdict.

There is no Edge TPU on the build machine, so the TPU side of the broken-pairing cases is played by
worker functions that behave like the failures seen with mismatched libedgetpu/runtime pairs (a
crash inside the delegate, a hang, wrong numbers). The CPU side is always the real shipped model.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from device.cli import main
from device.commands.selftest import EXIT_BROKEN_PAIRING, EXIT_NO_TPU, exit_code
from device.config import ModelsSection
from device.models.accelerator import open_model
from device.runtime.selftest import check_model, compare_outputs, cpu_reference_models, probe_input

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
DETECTOR = "blazeface_full_range"


@pytest.fixture
def models() -> ModelsSection:
    return ModelsSection(dir=MODELS_DIR, cpu_threads=1)


def _cpu_outputs(models: ModelsSection, name: str, batch: np.ndarray) -> list[np.ndarray]:
    return open_model(cpu_reference_models(models, name), name).run(batch)


def agreeing_tpu(models: ModelsSection, name: str, batch: np.ndarray) -> tuple[str, list[np.ndarray]]:
    return "edgetpu:usb", _cpu_outputs(models, name, batch)


def slightly_off_tpu(models: ModelsSection, name: str, batch: np.ndarray) -> tuple[str, list[np.ndarray]]:
    outputs = _cpu_outputs(models, name, batch)
    return "edgetpu:usb", [out + 0.01 * float(np.ptp(out)) for out in outputs]


def garbage_tpu(models: ModelsSection, name: str, batch: np.ndarray) -> tuple[str, list[np.ndarray]]:
    outputs = _cpu_outputs(models, name, batch)
    rng = np.random.default_rng(7)
    return "edgetpu:usb", [rng.permutation(out.ravel()).reshape(out.shape) for out in outputs]


def crashing_tpu(models: ModelsSection, name: str, batch: np.ndarray) -> tuple[str, list[np.ndarray]]:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def hanging_tpu(models: ModelsSection, name: str, batch: np.ndarray) -> tuple[str, list[np.ndarray]]:
    time.sleep(60)
    raise AssertionError("unreachable")


def test_without_a_tpu_the_selftest_says_so_and_passes(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR)
    assert result.verdict == "no-tpu"
    assert result.tpu_state.startswith("cpu:fallback (")
    assert exit_code([result], require_tpu=False) == 0
    assert exit_code([result], require_tpu=True) == EXIT_NO_TPU


def test_cli_reports_no_tpu_honestly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "unit.toml"
    config.write_text(f'[models]\ndir = "{MODELS_DIR}"\n')
    assert main(["--config", str(config), "selftest", "--model", DETECTOR]) == 0
    assert "no-tpu: no Edge TPU in use: cpu:fallback" in capsys.readouterr().out
    assert main(["--config", str(config), "selftest", "--model", DETECTOR, "--require-tpu"]) == EXIT_NO_TPU


def test_cli_fails_clearly_for_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "unit.toml"
    config.write_text(f'[models]\ndir = "{MODELS_DIR}"\n')
    assert main(["--config", str(config), "selftest", "--model", "no_such_model"]) == 1
    assert "not in" in capsys.readouterr().err


def test_a_tpu_that_agrees_passes(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR, worker=agreeing_tpu)
    assert result.verdict == "ok"
    assert result.max_relative_diff == 0.0


def test_rounding_differences_within_tolerance_pass(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR, worker=slightly_off_tpu)
    assert result.verdict == "ok"
    assert result.max_relative_diff == pytest.approx(0.01, rel=1e-3)


def test_wrong_numbers_are_a_broken_pairing(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR, worker=garbage_tpu)
    assert result.verdict == "broken"
    assert "disagree" in result.detail
    assert exit_code([result], require_tpu=False) == EXIT_BROKEN_PAIRING


def test_a_crash_in_the_tpu_runtime_is_reported_not_inherited(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR, worker=crashing_tpu)
    assert result.verdict == "broken"
    assert "SIGSEGV" in result.detail
    assert "matched pair" in result.detail


@pytest.mark.slow
def test_a_hung_tpu_runtime_is_a_broken_pairing(models: ModelsSection) -> None:
    result = check_model(models, DETECTOR, worker=hanging_tpu, timeout_s=3.0)
    assert result.verdict == "broken"
    assert "hung" in result.detail


def test_probe_input_spans_the_range_with_structure() -> None:
    batch = probe_input((1, 32, 48, 3), -1.0, 1.0)
    assert batch.shape == (1, 32, 48, 3)
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert batch.max() - batch.min() > 1.5
    assert not np.allclose(batch[..., 0], batch[..., 1])


def test_compare_outputs_is_relative_to_the_reference_range() -> None:
    reference = [np.array([0.0, 10.0], dtype=np.float32)]
    assert compare_outputs(reference, [np.array([1.0, 10.0], dtype=np.float32)]) == [pytest.approx(0.1)]
    with pytest.raises(ValueError, match="shape"):
        compare_outputs(reference, [np.zeros(3, dtype=np.float32)])
    with pytest.raises(ValueError, match="outputs"):
        compare_outputs(reference, [])
