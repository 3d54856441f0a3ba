"""The accelerator seam: real TFLite interpreters on the shipped detector; the TPU behind injected loaders."""

from __future__ import annotations

import ctypes.util
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from interpreter_support import ForwardingInterpreter, ManualClock
from tamper_support import flip_one_bit

from device.config import ModelsSection
from device.models.accelerator import open_model
from device.models.interpreter import Interpreter, load_interpreter
from device.models.manifest import ModelFileError, load_manifest, sha256_file

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
DETECTOR = "blazeface_full_range"


def no_tpu(library: str, options: dict[str, str]) -> object:
    raise ValueError(f"Failed to load delegate from {library}")


class BrokenOnInvoke(ForwardingInterpreter):
    """A real interpreter whose device goes away: invoke raises, like a USB TPU that was unplugged."""

    def __init__(self, inner: Interpreter) -> None:
        super().__init__(inner)
        self.fail = False

    def invoke(self) -> None:
        if self.fail:
            raise RuntimeError("Failed to invoke: USB transfer error 2")
        super().invoke()


@pytest.fixture
def models_with_edgetpu(tmp_path: Path) -> Path:
    """A models folder whose manifest also lists a 'compiled' file (a copy of the CPU file: no TPU here)."""
    target = tmp_path / "models"
    shutil.copytree(REPO_MODELS, target)
    manifest = json.loads((target / "manifest.json").read_text())
    entry = manifest["models"][DETECTOR]
    source = target / entry["files"]["float"]["path"]
    compiled = source.with_name("detector_edgetpu.tflite")
    shutil.copyfile(source, compiled)
    entry["files"]["edgetpu"] = {"path": str(compiled.relative_to(target)), "sha256": sha256_file(compiled)}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def cpu_factory_ignoring_delegates(
    made: list[BrokenOnInvoke],
) -> Any:
    """Loads the 'compiled' file on the CPU; records which interpreters were made for the TPU."""

    def factory(path: Path, threads: int, delegates: Sequence[object]) -> Interpreter:
        interpreter = load_interpreter(path, threads)
        if delegates:
            wrapped = BrokenOnInvoke(interpreter)
            made.append(wrapped)
            return wrapped
        return interpreter

    return factory


def test_cpu_by_config_runs_the_shipped_detector() -> None:
    model = open_model(ModelsSection(dir=REPO_MODELS, accelerator="cpu", cpu_variant="float"), DETECTOR)
    assert model.state == "cpu"
    assert model.variant == "float"
    assert model.input_shape == (1, 192, 192, 3)
    outputs = model.run(np.zeros((1, 192, 192, 3), np.float32))
    assert sorted(o.shape for o in outputs) == [(1, 2304, 1), (1, 2304, 16)]
    assert all(o.dtype == np.float32 for o in outputs)
    assert model.health()["inferences"] == 1


def test_missing_tpu_falls_back_to_cpu_with_the_reason(models_with_edgetpu: Path) -> None:
    models = ModelsSection(dir=models_with_edgetpu, accelerator="auto", cpu_variant="float")
    model = open_model(models, DETECTOR, delegate_loader=no_tpu)
    assert model.state.startswith("cpu:fallback (no Edge TPU: usb: Failed to load delegate")
    assert "pci:" in model.state
    assert model.variant == "float"
    assert len(model.run(np.zeros((1, 192, 192, 3), np.float32))) == 2


def test_no_compiled_file_is_a_fallback_reason() -> None:
    models = ModelsSection(dir=REPO_MODELS, accelerator="auto", cpu_variant="float")
    model = open_model(models, DETECTOR, delegate_loader=no_tpu)
    assert model.state == "cpu:fallback (no Edge TPU file in the manifest)"


def test_tpu_found_on_pci_uses_the_compiled_file(models_with_edgetpu: Path) -> None:
    asked: list[dict[str, str]] = []

    def pci_only(library: str, options: dict[str, str]) -> object:
        asked.append(options)
        if options["device"] != "pci":
            raise ValueError("no usb device")
        return object()

    made: list[BrokenOnInvoke] = []
    models = ModelsSection(dir=models_with_edgetpu, accelerator="auto", cpu_variant="float")
    model = open_model(
        models, DETECTOR, delegate_loader=pci_only, interpreter_factory=cpu_factory_ignoring_delegates(made)
    )
    assert asked == [{"device": "usb"}, {"device": "pci"}]
    assert model.state == "edgetpu:pci"
    assert model.variant == "edgetpu"
    assert model.health()["file"] == "detector_edgetpu.tflite"


def test_configured_usb_device_is_the_only_one_tried(models_with_edgetpu: Path) -> None:
    asked: list[dict[str, str]] = []

    def record(library: str, options: dict[str, str]) -> object:
        asked.append(options)
        raise ValueError("not found")

    models = ModelsSection(dir=models_with_edgetpu, edgetpu_device="usb", cpu_variant="float")
    model = open_model(models, DETECTOR, delegate_loader=record)
    assert asked == [{"device": "usb"}]
    assert model.state == "cpu:fallback (no Edge TPU: usb: not found)"


def test_tpu_lost_mid_run_degrades_to_cpu_with_the_same_answer(
    models_with_edgetpu: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[BrokenOnInvoke] = []
    models = ModelsSection(dir=models_with_edgetpu, cpu_variant="float")
    model = open_model(
        models,
        DETECTOR,
        delegate_loader=lambda library, options: object(),
        interpreter_factory=cpu_factory_ignoring_delegates(made),
    )
    assert model.state == "edgetpu:usb"
    batch = np.random.default_rng(1).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    on_tpu = model.run(batch)
    made[0].fail = True
    with caplog.at_level(logging.INFO, logger="device.models.accelerator"):
        on_cpu = model.run(batch)
        model.run(batch)
    assert model.state == "cpu:fallback (edgetpu inference failed: Failed to invoke: USB transfer error 2)"
    for a, b in zip(on_tpu, on_cpu, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert model.health()["edgetpu_failures"] == 1
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # logged once, not per frame


def test_tpu_is_probed_again_after_the_interval(models_with_edgetpu: Path) -> None:
    plugged = {"yes": False}

    def loader(library: str, options: dict[str, str]) -> object:
        if not plugged["yes"]:
            raise ValueError("no device")
        return object()

    clock = ManualClock()
    made: list[BrokenOnInvoke] = []
    models = ModelsSection(dir=models_with_edgetpu, cpu_variant="float", reprobe_interval_s=60)
    model = open_model(
        models,
        DETECTOR,
        delegate_loader=loader,
        interpreter_factory=cpu_factory_ignoring_delegates(made),
        clock=clock,
    )
    batch = np.zeros((1, 192, 192, 3), np.float32)
    assert model.state.startswith("cpu:fallback")
    plugged["yes"] = True
    clock.now += 59
    model.run(batch)
    assert model.state.startswith("cpu:fallback")
    clock.now += 2
    model.run(batch)
    assert model.state == "edgetpu:usb"
    assert len(made) == 1


def test_cpu_config_never_probes_the_tpu(models_with_edgetpu: Path) -> None:
    def must_not_be_called(library: str, options: dict[str, str]) -> object:
        raise AssertionError("probed the TPU although accelerator = cpu")

    model = open_model(
        ModelsSection(dir=models_with_edgetpu, accelerator="cpu", cpu_variant="float"),
        DETECTOR,
        delegate_loader=must_not_be_called,
    )
    assert model.state == "cpu"


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "models"
    shutil.copytree(REPO_MODELS, target)
    entry = load_manifest(target).models[DETECTOR]
    path = target / entry.files["float"].path
    flip_one_bit(path)
    with pytest.raises(ModelFileError, match="does not match the manifest"):
        open_model(ModelsSection(dir=target, accelerator="cpu", cpu_variant="float"), DETECTOR)


def test_tampered_compiled_file_is_a_fallback_not_a_crash(models_with_edgetpu: Path) -> None:
    compiled = models_with_edgetpu / DETECTOR / "detector_edgetpu.tflite"
    data = bytearray(compiled.read_bytes())
    data[len(data) // 3] ^= 0x40
    compiled.write_bytes(bytes(data))
    model = open_model(
        ModelsSection(dir=models_with_edgetpu, cpu_variant="float"),
        DETECTOR,
        delegate_loader=lambda library, options: object(),
    )
    assert model.state.startswith("cpu:fallback (")
    assert "sha256" in model.state


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelFileError, match=r"known: .*blazeface_full_range"):
        open_model(ModelsSection(dir=REPO_MODELS, accelerator="cpu"), "no_such_model")


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no model manifest"):
        open_model(ModelsSection(dir=tmp_path, accelerator="cpu"), DETECTOR)


def test_the_real_delegate_loader_without_a_tpu_falls_back(models_with_edgetpu: Path) -> None:
    """No injection: the runtime's own load_delegate("libedgetpu.so.1") on a machine with no TPU."""
    model = open_model(ModelsSection(dir=models_with_edgetpu, cpu_variant="float"), DETECTOR)
    if ctypes.util.find_library("edgetpu") is None:
        assert model.state.startswith("cpu:fallback (libedgetpu.so.1 is not installed (")
    else:  # the library without a device: each device option was tried
        assert model.state.startswith("cpu:fallback (no Edge TPU: usb: ")
    assert len(model.run(np.zeros((1, 192, 192, 3), np.float32))) == 2


def test_a_missing_library_is_reported_once_not_per_device(models_with_edgetpu: Path) -> None:
    from device.models.interpreter import EdgeTpuLibraryMissingError

    asked: list[dict[str, str]] = []

    def missing(library: str, options: dict[str, str]) -> object:
        asked.append(options)
        raise EdgeTpuLibraryMissingError(f"{library} is not installed")

    model = open_model(
        ModelsSection(dir=models_with_edgetpu, cpu_variant="float"), DETECTOR, delegate_loader=missing
    )
    assert asked == [{"device": "usb"}]
    assert model.state == "cpu:fallback (libedgetpu.so.1 is not installed)"
