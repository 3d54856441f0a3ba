"""The accelerator seam: one model, run on the Edge TPU when there is one, else on the CPU.

:func:`open_model` picks the backend once at start and keeps the CPU interpreter ready beside the TPU
one, so that a TPU that disappears mid-run (inference raises) costs one retry on the CPU, never a stop.
While on the CPU because the TPU was missing, the TPU is probed again every ``reprobe_interval_s``.

States, logged once per change and reported by :meth:`InferenceModel.health`:
``edgetpu:usb`` / ``edgetpu:pci`` (compiled file on the TPU), ``cpu`` (CPU by configuration) and
``cpu:fallback (<reason>)`` (a TPU was allowed but could not be used, and why).

Which CPU file (float or int8) runs is chosen per machine by :mod:`device.models.cpu_variant`; the
runtime and delegate loading are in :mod:`device.models.interpreter`, the tensor arithmetic in
:mod:`device.models.tensors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.config import ModelsSection
from device.models.cpu_variant import CpuChoice, choose_cpu_variant
from device.models.interpreter import (
    EDGETPU_LIBRARY,
    Backend,
    DelegateLoader,
    EdgeTpuLibraryMissingError,
    InterpreterFactory,
    invoke,
    load_edgetpu_delegate,
    load_interpreter,
)
from device.models.manifest import (
    ModelEntry,
    ModelFileError,
    Variant,
    load_manifest,
    model_entry,
    verify_file,
)
from device.models.tensors import Prepare, TensorSpec, pixel_preparer, prepare_float

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class EdgeTpuUnavailableError(Exception):
    """Why the Edge TPU cannot be used right now; becomes the reason in ``cpu:fallback (...)``."""


class InferenceModel:
    """One model on its current backend. Thread-safe: ``run`` calls are serialised."""

    def __init__(
        self,
        name: str,
        cpu: Backend,
        *,
        accelerator: str,
        probe: Callable[[], Backend] | None,
        reprobe_interval_s: float,
        clock: Clock = time.monotonic,
        cpu_choice: CpuChoice | None = None,
    ) -> None:
        self.name = name
        self._cpu = cpu
        self._tpu: Backend | None = None
        self._accelerator = accelerator
        self._probe = probe
        self._reprobe_interval_s = reprobe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fallback_reason: str | None = None
        self._last_probe = clock()
        self._inferences = 0
        self._edgetpu_failures = 0
        self._cpu_choice = cpu_choice
        self._logged_state: str | None = None
        if probe is not None:
            self._try_edgetpu()
        self._log_state()

    @property
    def state(self) -> str:
        if self._tpu is not None:
            return self._tpu.state
        if self._fallback_reason is None:
            return "cpu"
        return f"cpu:fallback ({self._fallback_reason})"

    @property
    def variant(self) -> Variant:
        return (self._tpu or self._cpu).variant

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self._tpu or self._cpu).inputs[0].shape

    @property
    def input_spec(self) -> TensorSpec:
        """The active file's input tensor (dtype and quantisation), for callers that feed it directly."""
        return (self._tpu or self._cpu).inputs[0]

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Real-valued input (already normalised), float32 outputs, on whichever backend is active."""
        return self._run(batch, prepare_float)

    def run_pixels(self, pixels: NDArray[np.uint8], mean: float, std: float) -> list[NDArray[np.float32]]:
        """uint8 pixels normalised as (pixel - mean) / std; skips the float round trip where it can."""
        if pixels.dtype != np.uint8:
            raise ValueError(f"run_pixels takes uint8 pixels, got {pixels.dtype}")
        return self._run(pixels, pixel_preparer(mean, std))

    def _run(self, batch: NDArray[Any], prepare: Prepare) -> list[NDArray[np.float32]]:
        with self._lock:
            self._inferences += 1
            due = self._clock() - self._last_probe >= self._reprobe_interval_s
            if self._tpu is None and self._probe is not None and due:
                self._try_edgetpu()
                self._log_state()
            if self._tpu is not None:
                try:
                    return invoke(self._tpu, batch, prepare)
                except ValueError:
                    raise  # a bad batch shape is the caller's error, not the TPU's
                except Exception as error:
                    # The runtime reports a lost USB TPU as a generic RuntimeError; any failure here
                    # means the device is not usable, and the CPU file gives the same answer.
                    self._edgetpu_failures += 1
                    self._tpu = None
                    self._last_probe = self._clock()
                    self._fallback_reason = f"edgetpu inference failed: {_short(error)}"
                    self._log_state(logging.ERROR)
            return invoke(self._cpu, batch, prepare)

    def health(self) -> dict[str, Any]:
        backend = self._tpu or self._cpu
        return {
            "model": self.name,
            "state": self.state,
            "variant": backend.variant,
            "file": backend.path.name,
            "accelerator": self._accelerator,
            "cpu_variant": self._cpu.variant,
            "cpu_variant_reason": self._cpu_choice.reason if self._cpu_choice else "",
            "cpu_variant_basis": self._cpu_choice.basis if self._cpu_choice else "",
            "cpu_variant_int8_speedup": self.cpu_variant_timing().get("int8_speedup"),
            "inferences": self._inferences,
            "edgetpu_failures": self._edgetpu_failures,
        }

    def cpu_variant_timing(self) -> dict[str, float | int]:
        """The float/int8 timing behind the CPU choice (empty when it was not measured)."""
        timing = self._cpu_choice.timing if self._cpu_choice else None
        return timing.as_dict() if timing is not None else {}

    def _try_edgetpu(self) -> None:
        assert self._probe is not None
        self._last_probe = self._clock()
        try:
            self._tpu = self._probe()
        except EdgeTpuUnavailableError as reason:
            self._fallback_reason = str(reason)
            return
        self._fallback_reason = None

    def _log_state(self, level: int = logging.INFO) -> None:
        state = self.state
        if state == self._logged_state:
            return
        self._logged_state = state
        log.log(
            level, "model %s: %s, %s file %s", self.name, state, self.variant, (self._tpu or self._cpu).path
        )


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:160]


def open_model(
    models: ModelsSection,
    name: str,
    *,
    delegate_loader: DelegateLoader | None = None,
    state_dir: Path | None = None,
    interpreter_factory: InterpreterFactory = load_interpreter,
    clock: Clock = time.monotonic,
    timer: Clock = time.perf_counter,
) -> InferenceModel:
    """The model ``name`` from ``models.dir``, sha256-checked, on the best backend allowed by config.

    ``timer`` times the float and int8 files when ``models.cpu_variant = "auto"`` has to choose.
    """
    manifest = load_manifest(models.dir)
    entry = model_entry(manifest, name, models.dir)
    choice = choose_cpu_variant(
        models, name, entry, state_dir=state_dir, interpreter_factory=interpreter_factory, timer=timer
    )
    cpu_file = entry.files[choice.variant]
    cpu_path = verify_file(models.dir, name, choice.variant, cpu_file)
    cpu = Backend.create(
        interpreter_factory(cpu_path, models.cpu_threads, ()), "cpu", choice.variant, cpu_path
    )

    probe: Callable[[], Backend] | None = None
    if models.accelerator != "cpu":
        loader = delegate_loader or load_edgetpu_delegate

        def probe() -> Backend:
            return probe_edgetpu(models, name, entry, loader, interpreter_factory)

    return InferenceModel(
        name,
        cpu,
        accelerator=models.accelerator,
        probe=probe,
        reprobe_interval_s=models.reprobe_interval_s,
        clock=clock,
        cpu_choice=choice,
    )


def probe_edgetpu(
    models: ModelsSection,
    name: str,
    entry: ModelEntry,
    loader: DelegateLoader,
    interpreter_factory: InterpreterFactory,
) -> Backend:
    compiled = entry.files.get("edgetpu")
    if compiled is None or compiled.sha256 is None:
        raise EdgeTpuUnavailableError("no Edge TPU file in the manifest")
    try:
        path = verify_file(models.dir, name, "edgetpu", compiled)
    except ModelFileError as error:
        raise EdgeTpuUnavailableError(str(error)) from None
    devices = ("usb", "pci") if models.edgetpu_device == "any" else (models.edgetpu_device,)
    problems = []
    for device in devices:
        try:
            delegate = loader(EDGETPU_LIBRARY, {"device": device})
        except EdgeTpuLibraryMissingError as error:
            raise EdgeTpuUnavailableError(str(error)) from None
        except Exception as error:  # the runtime raises ValueError, OSError or RuntimeError here
            problems.append(f"{device}: {_short(error)}")
            continue
        try:
            interpreter = interpreter_factory(path, models.cpu_threads, (delegate,))
            return Backend.create(interpreter, f"edgetpu:{device}", "edgetpu", path)
        except Exception as error:
            problems.append(f"{device}: compiled model did not load: {_short(error)}")
    raise EdgeTpuUnavailableError("no Edge TPU: " + "; ".join(problems))
