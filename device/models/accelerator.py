"""The accelerator seam: one model, run on the Edge TPU when there is one, else on the CPU.

:func:`open_model` picks the backend once at start and keeps the CPU interpreter ready beside the TPU
one, so that a TPU that disappears mid-run (inference raises) costs one retry on the CPU, never a stop.
While on the CPU because the TPU was missing, the TPU is probed again every ``reprobe_interval_s``.

States, logged once per change and reported by :meth:`InferenceModel.health`:
``edgetpu:usb`` / ``edgetpu:pci`` (compiled file on the TPU), ``cpu`` (CPU by configuration) and
``cpu:fallback (<reason>)`` (a TPU was allowed but could not be used, and why).

The CPU variant (float or full-integer int8) is a per-machine choice: which one is faster depends on the
CPU and the runtime's kernels, so with ``models.cpu_variant = "auto"`` both are timed at first start
(the margin rule in :mod:`device.models.cpu_variant` keeps it from flipping) and the result is kept in
the state folder, keyed by the files' sha256, the thread count, the machine and the runtime.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import ModelsSection
from device.models.cpu_variant import (
    CPU_VARIANTS,
    ChoiceStore,
    CpuChoice,
    CpuVariant,
    RememberedChoice,
    decide,
    time_interleaved,
)
from device.models.manifest import (
    ModelEntry,
    ModelFileError,
    Variant,
    load_manifest,
    model_entry,
    verify_file,
)
from device.models.native_stderr import without_runtime_banner

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class AcceleratorError(Exception):
    """No TFLite runtime is installed, or a model cannot be run at all."""


class Interpreter(Protocol):
    """The part of the TFLite interpreter API this module uses (ai_edge_litert and tflite_runtime)."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: NDArray[Any]) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> NDArray[Any]: ...


DelegateLoader = Callable[[str, dict[str, str]], object]
InterpreterFactory = Callable[[Path, int, Sequence[object]], Interpreter]
Clock = Callable[[], float]


def tflite_runtime() -> ModuleType:
    """The interpreter module: ai_edge_litert where it has wheels, else tflite_runtime (the apt pair)."""
    for name in RUNTIME_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise AcceleratorError("no TFLite runtime: install ai-edge-litert (or tflite-runtime on the unit)")


def runtime_version() -> str:
    runtime = tflite_runtime()
    package = runtime.__name__.split(".")[0]
    try:
        from importlib.metadata import version

        return f"{package}=={version(package.replace('_', '-'))}"
    except Exception:  # a runtime installed from apt may have no distribution metadata
        return package


def load_interpreter(path: Path, threads: int, delegates: Sequence[object] = ()) -> Interpreter:
    """A ready (allocated) interpreter for ``path``; ModelFileError when the file is not a usable model."""
    runtime = tflite_runtime()
    try:
        with without_runtime_banner():
            interpreter: Interpreter = runtime.Interpreter(
                model_path=str(path),
                num_threads=threads,
                experimental_delegates=list(delegates) or None,
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelFileError(f"cannot load model {path}: {error}") from None
    return interpreter


class EdgeTpuLibraryMissingError(ValueError):
    """libedgetpu is not installed: no device option can help, so probing stops at the first."""


def load_edgetpu_delegate(library: str, options: dict[str, str]) -> object:
    # Opening the library first gives a clear reason when libedgetpu is not installed, and avoids the
    # runtime's Delegate finaliser failing noisily on a delegate object that never got its library.
    try:
        ctypes.CDLL(library)
    except OSError as error:
        raise EdgeTpuLibraryMissingError(f"{library} is not installed ({error})") from None
    runtime = tflite_runtime()
    delegate: object = runtime.load_delegate(library, options)
    return delegate


@dataclass(frozen=True)
class TensorSpec:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.dtype(np.uint8), np.dtype(np.int8)) and self.scale > 0.0

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            index=int(details["index"]),
            shape=tuple(int(n) for n in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


@dataclass(frozen=True)
class Backend:
    interpreter: Interpreter
    state: str
    variant: Variant
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def create(cls, interpreter: Interpreter, state: str, variant: Variant, path: Path) -> Backend:
        inputs = tuple(TensorSpec.from_details(d) for d in interpreter.get_input_details())
        outputs = tuple(TensorSpec.from_details(d) for d in interpreter.get_output_details())
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: expected one input tensor, found {len(inputs)}")
        return cls(interpreter, state, variant, path, inputs, outputs)


def quantize(values: NDArray[np.float32], spec: TensorSpec) -> NDArray[Any]:
    info = np.iinfo(spec.dtype)
    scaled = np.rint(values / spec.scale + spec.zero_point)
    quantized: NDArray[Any] = np.clip(scaled, info.min, info.max).astype(spec.dtype)
    return quantized


def dequantize(values: NDArray[Any], spec: TensorSpec) -> NDArray[np.float32]:
    if not spec.quantized:
        return values.astype(np.float32, copy=True)
    return ((values.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)).astype(
        np.float32
    )


Prepare = Callable[[NDArray[Any], TensorSpec], NDArray[Any]]


def prepare_float(chunk: NDArray[Any], spec: TensorSpec) -> NDArray[Any]:
    """Real-valued input as the file wants it: quantised for int8/uint8 files."""
    values = chunk.astype(np.float32, copy=False)
    return quantize(values, spec) if spec.quantized else values.astype(spec.dtype, copy=False)


def pixel_preparer(mean: float, std: float) -> Prepare:
    """uint8 pixels whose real value is (pixel - mean) / std, as the file wants them.

    For a quantised input, a 256-entry table maps each pixel to exactly the value that quantising the
    float would give (rounding included): one table lookup per frame instead of a float round trip.
    """
    tables: dict[TensorSpec, NDArray[Any]] = {}

    def prepare(chunk: NDArray[Any], spec: TensorSpec) -> NDArray[Any]:
        if not spec.quantized:
            values = (chunk.astype(np.float32) - np.float32(mean)) * np.float32(1.0 / std)
            return values.astype(spec.dtype, copy=False)
        table = tables.get(spec)
        if table is None:
            levels = (np.arange(256, dtype=np.float32) - np.float32(mean)) * np.float32(1.0 / std)
            table = tables[spec] = quantize(levels, spec)
        if table.itemsize == 1 and chunk.flags.c_contiguous:
            # OpenCV's table lookup: the same bytes as np.take, in about a third of the time for a
            # detector frame (int8 tables are looked up as their uint8 bit patterns)
            shape = chunk.shape
            flat = chunk.reshape(-1, 1)
            looked_up = cv2.LUT(flat, table.view(np.uint8))
            return np.asarray(looked_up, dtype=np.uint8).view(table.dtype).reshape(shape)
        return np.take(table, chunk)

    return prepare


def invoke(
    backend: Backend, batch: NDArray[Any], prepare: Prepare = prepare_float
) -> list[NDArray[np.float32]]:
    """Run a batch; ``prepare`` turns it into the file's input (quantising for int8/uint8 files) and
    the outputs are dequantised to float32.

    A batch larger than the file's fixed batch size runs item by item (compiled Edge TPU files cannot
    be resized), and the outputs are concatenated along the batch axis.
    """
    spec = backend.inputs[0]
    if batch.ndim != len(spec.shape) or tuple(batch.shape[1:]) != spec.shape[1:]:
        raise ValueError(f"input batch shape {batch.shape} does not fit the model's input {spec.shape}")
    step = spec.shape[0]
    if batch.shape[0] % step:
        raise ValueError(f"batch of {batch.shape[0]} is not a multiple of the model's batch {step}")
    interpreter = backend.interpreter
    results: list[list[NDArray[np.float32]]] = [[] for _ in backend.outputs]
    for start in range(0, batch.shape[0], step):
        tensor = prepare(batch[start : start + step], spec)
        interpreter.set_tensor(spec.index, np.ascontiguousarray(tensor))
        interpreter.invoke()
        for slot, out in enumerate(backend.outputs):
            results[slot].append(dequantize(interpreter.get_tensor(out.index), out))
    return [parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0) for parts in results]


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


def cpu_files(entry: ModelEntry) -> list[CpuVariant]:
    """The CPU files (float, int8) the manifest lists for a model, with their sha256."""
    return [v for v in CPU_VARIANTS if v in entry.files and entry.files[v].sha256]


def choose_cpu_variant(
    models: ModelsSection,
    name: str,
    entry: ModelEntry,
    *,
    state_dir: Path | None,
    interpreter_factory: InterpreterFactory = load_interpreter,
    timer: Clock = time.perf_counter,
) -> CpuChoice:
    """The CPU file for ``name``: from the config, the one measured earlier for the same files, machine
    and runtime, or timed now and chosen by the margin rule (:func:`device.models.cpu_variant.decide`)."""
    available = cpu_files(entry)
    if not available:
        raise ModelFileError(f"model {name!r} has no CPU file (float or int8) in the manifest")
    if models.cpu_variant != "auto":
        if models.cpu_variant not in available:
            raise ModelFileError(f"models.cpu_variant = {models.cpu_variant!r} but {name!r} has no such file")
        return CpuChoice(models.cpu_variant, "set in config", basis="config")
    if len(available) == 1:
        return CpuChoice(available[0], "only CPU file", basis="only_file")

    key = "|".join(
        [
            *(f"{v}:{entry.files[v].sha256}" for v in CPU_VARIANTS),
            f"threads:{models.cpu_threads}",
            f"machine:{platform.machine()}",
            f"cpu:{cpu_model()}",
            runtime_version(),
        ]
    )
    store = ChoiceStore(state_dir)
    remembered = store.get(name)
    if remembered is not None and remembered.key == key:
        return CpuChoice(
            remembered.variant,
            f"kept from first start: {remembered.reason}",
            remembered.timing,
            remembered.basis,
        )

    backends = {
        variant: cpu_backend(models.dir, name, entry, variant, models.cpu_threads, interpreter_factory)
        for variant in CPU_VARIANTS
    }
    timing = time_interleaved(
        *(run_once_on_zeros(backends[variant]) for variant in CPU_VARIANTS),
        timer=timer,
        budget_s=models.cpu_variant_probe_s,
    )
    previous = remembered.variant if remembered is not None else None
    choice = decide(timing, previous=previous, margin=models.cpu_variant_margin)
    log.info("model %s: CPU file %s: %s; %s", name, choice.variant, choice.reason, timing.as_dict())
    store.put(name, RememberedChoice(key, choice.variant, choice.reason, timing, choice.basis))
    return choice


def cpu_backend(
    models_dir: Path,
    name: str,
    entry: ModelEntry,
    variant: Variant,
    threads: int,
    interpreter_factory: InterpreterFactory,
) -> Backend:
    path = verify_file(models_dir, name, variant, entry.files[variant])
    return Backend.create(interpreter_factory(path, threads, ()), "cpu", variant, path)


def run_once_on_zeros(backend: Backend) -> Callable[[], object]:
    """One inference on a fixed input (the graph's cost does not depend on the pixels)."""
    batch = np.zeros(backend.inputs[0].shape, dtype=np.float32)
    return lambda: invoke(backend, batch)


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
