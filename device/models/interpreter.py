"""The TFLite runtime: which library, an interpreter for a file, the Edge TPU delegate, and one batch
through a loaded file.

Interpreter library: ``ai_edge_litert`` where it has wheels, else ``tflite_runtime`` (the apt pair that
libedgetpu is built against). Loading an interpreter or the delegate raises when it cannot; choosing
between the Edge TPU and the CPU, and saying why, is :mod:`device.models.accelerator`'s job.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from device.errors import UserError
from device.models.manifest import ModelFileError, Variant
from device.models.native_stderr import without_runtime_banner
from device.models.tensors import Prepare, TensorSpec, dequantize, prepare_float

EDGETPU_LIBRARY = "libedgetpu.so.1"
RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class AcceleratorError(UserError):
    """No TFLite runtime is installed, or a model cannot be run at all."""


class Interpreter(Protocol):
    """The part of the TFLite interpreter API this package uses (ai_edge_litert and tflite_runtime)."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: NDArray[Any]) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> NDArray[Any]: ...


DelegateLoader = Callable[[str, dict[str, str]], object]
InterpreterFactory = Callable[[Path, int, Sequence[object]], Interpreter]


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
class Backend:
    """One loaded model file on its interpreter, with the file's tensors and where it runs (``state``)."""

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
