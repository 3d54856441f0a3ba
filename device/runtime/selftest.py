"""Boot self-test: one inference on the Edge TPU, the same on the CPU, and a comparison.

libedgetpu and the TFLite interpreter must be a matched pair (built against the same TensorFlow);
a mismatched pair typically crashes the process inside the delegate (SIGSEGV/SIGABRT) or returns
garbage. Either would otherwise show up later as a crash loop of the service or as silent wrong
decisions. So the TPU half runs in a child process: a crash there becomes a clear verdict here.

The reference is the CPU running the same quantisation (the int8 file when the manifest has one), so
the only expected difference is the Edge TPU's own rounding, which stays within a few quantisation
steps. The input is a smooth synthetic image spanning the model's input range: deterministic and with
structure, so a wrong-but-plausible output shows as a difference.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from device.config import ModelsSection
from device.models.accelerator import InferenceModel, open_model
from device.models.manifest import load_manifest, model_entry

log = logging.getLogger(__name__)

# Largest allowed |tpu - cpu| as a fraction of the CPU output's range, per output tensor. The Edge TPU
# and the CPU int8 kernels round differently in a few ops; a broken pairing is off by far more.
DEFAULT_TOLERANCE = 0.05
CHILD_TIMEOUT_S = 90.0

Verdict = Literal["ok", "no-tpu", "broken"]
Outputs = list[NDArray[np.float32]]
# Runs one model on the TPU in the child; returns the backend state and its outputs.
TpuWorker = Callable[[ModelsSection, str, NDArray[np.float32]], tuple[str, Outputs]]


@dataclass(frozen=True)
class ModelResult:
    model: str
    verdict: Verdict
    detail: str
    tpu_state: str = ""
    max_relative_diff: float | None = None
    diffs: list[float] = field(default_factory=list)


def probe_input(shape: tuple[int, ...], low: float, high: float) -> NDArray[np.float32]:
    """A smooth, deterministic test image (N, H, W, C) with values from ``low`` to ``high``."""
    batch, height, width, channels = shape
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    planes = [
        0.5 + 0.5 * np.sin(2 * np.pi * ((c + 1) * x + (c + 2) * y) + c) * np.cos(3 * np.pi * x * y)
        for c in range(channels)
    ]
    image = np.stack(planes, axis=-1)
    return np.broadcast_to(low + (high - low) * image, (batch, height, width, channels)).astype(np.float32)


def input_range(model: InferenceModel) -> tuple[float, float]:
    """The real-valued input range the file was quantised for, or [-1, 1] for a float input."""
    spec = model.input_spec
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        return (info.min - spec.zero_point) * spec.scale, (info.max - spec.zero_point) * spec.scale
    return -1.0, 1.0


def compare_outputs(reference: Outputs, candidate: Outputs) -> list[float]:
    """Per output tensor: max |candidate - reference| over the reference's value range."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} outputs, expected {len(reference)}")
    diffs = []
    for ref, got in zip(reference, candidate, strict=True):
        if ref.shape != got.shape:
            raise ValueError(f"output shape {got.shape}, expected {ref.shape}")
        span = float(np.max(ref) - np.min(ref)) or 1.0
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) / span)
    return diffs


def tpu_models(models: ModelsSection, name: str) -> ModelsSection:
    """TPU required; its CPU side fixed to the reference's file, so no first-start timing runs here."""
    return cpu_reference_models(models, name).model_copy(update={"accelerator": "edgetpu"})


def cpu_reference_models(models: ModelsSection, name: str) -> ModelsSection:
    """The CPU config whose file matches the TPU's quantisation: int8 when there is one."""
    entry = model_entry(load_manifest(models.dir), name, models.dir)
    variant = "int8" if "int8" in entry.files and entry.files["int8"].sha256 else "auto"
    return models.model_copy(update={"accelerator": "cpu", "cpu_variant": variant})


def run_on_tpu(models: ModelsSection, name: str, batch: NDArray[np.float32]) -> tuple[str, Outputs]:
    model = open_model(tpu_models(models, name), name)
    if not model.state.startswith("edgetpu:"):
        return model.state, []
    return model.state, model.run(batch)


def _child(worker: TpuWorker, models: ModelsSection, name: str, batch: Any, pipe: Connection) -> None:
    try:
        pipe.send(("result", worker(models, name, batch)))
    except BaseException as error:  # reported to the parent, which decides the verdict
        pipe.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        pipe.close()


def isolated_tpu_run(
    worker: TpuWorker, models: ModelsSection, name: str, batch: NDArray[np.float32], timeout_s: float
) -> tuple[str, Any]:
    """Runs ``worker`` in a child: ("result", (state, outputs)), ("error", text) or ("crash", text).

    A spawned child, not a forked one: the parent already runs the CPU interpreter's threads, and a
    fork would copy their locks mid-use. ``worker`` must therefore be a module-level function.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(worker, models, name, batch, sender), daemon=True)
    process.start()
    sender.close()
    message: tuple[str, Any] | None = None
    if receiver.poll(timeout_s):
        try:
            message = receiver.recv()
        except EOFError:  # the child died before it could answer
            message = None
    process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join()
        return "crash", f"no answer within {timeout_s:.0f} s (the Edge TPU runtime hung)"
    if message is not None:
        return message
    code = process.exitcode or 0
    if code < 0:
        return "crash", f"the Edge TPU runtime crashed ({signal.Signals(-code).name})"
    return "crash", f"the Edge TPU check exited with status {code} without a result"


def check_model(
    models: ModelsSection,
    name: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    worker: TpuWorker = run_on_tpu,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> ModelResult:
    """TPU against CPU for one model. Raises ModelFileError/AcceleratorError when the model cannot load."""
    cpu = open_model(cpu_reference_models(models, name), name)
    low, high = input_range(cpu)
    batch = probe_input(cpu.input_shape, low, high)
    reference = cpu.run(batch)
    kind, payload = isolated_tpu_run(worker, models, name, batch, timeout_s)
    if kind != "result":
        return ModelResult(
            name, "broken", f"{payload}: libedgetpu and the TFLite runtime are not a matched pair"
        )
    state, outputs = payload
    if not str(state).startswith("edgetpu:"):
        return ModelResult(name, "no-tpu", f"no Edge TPU in use: {state}", tpu_state=state)
    try:
        diffs = compare_outputs(reference, outputs)
    except ValueError as error:
        return ModelResult(name, "broken", f"TPU output does not fit the CPU's: {error}", tpu_state=state)
    worst = max(diffs, default=0.0)
    if worst > tolerance:
        return ModelResult(
            name,
            "broken",
            f"TPU and CPU disagree: max difference {worst:.3f} of the output range (allowed {tolerance}); "
            "libedgetpu and the TFLite runtime are probably not a matched pair",
            tpu_state=state,
            max_relative_diff=worst,
            diffs=diffs,
        )
    return ModelResult(
        name, "ok", f"TPU agrees with CPU ({worst:.4f} of range)", state, max_relative_diff=worst, diffs=diffs
    )
