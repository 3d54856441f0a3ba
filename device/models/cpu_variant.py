"""Which CPU file (float or full-integer int8) a model runs from, chosen so that it does not flip.

Which file is faster depends on the CPU and the runtime's kernels, and on a shared or busy machine the
two are often close: a plain "keep the faster one" then picks float on one start and int8 on the next,
and the choice changes decisions too (the PAD and matching figures differ between the two files).
So the choice has hysteresis:

- both files are timed interleaved (float, int8, float, ...) so that load from other processes falls on
  both alike, after a warm-up, in ``BLOCKS`` consecutive blocks of as many pairs as fit in
  ``models.cpu_variant_probe_s`` (at least ``MIN_PAIRS_PER_BLOCK`` each);
- a file is chosen for speed only when it is faster by ``models.cpu_variant_margin`` or more in every
  block but one (median against median): a burst of load that favours one file for part of the probe
  (on a shared 2-core host the detector's ratio moved between 0.83x and 1.6x that way) is not a reason,
  and one disturbed block does not hide a clear winner (the embedder's int8, 2-4x faster, had single
  blocks down to 1.36x while other jobs ran);
- otherwise the previous choice for that model stays (kept in ``<state_dir>/cpu_variant.json``);
- with no previous choice, float: it is the reference the int8 file approximates, and the project's
  thresholds (matching, PAD) were measured on it, so without a clear speed gain it is the safer file.

With ``models.cpu_variant = "auto"`` (:func:`choose_cpu_variant`) the choice is timed at first start
and kept in the state folder, keyed by the files' sha256, the thread count, the machine and the runtime,
so a later start times nothing until one of those changes. The reason for each choice travels with it,
into health and ``make bench``.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from device.atomicio import UnsafeFileError, exclusive_lock, read_unit_file, write_atomically
from device.config import ModelsSection
from device.layout import CPU_VARIANT_FILE
from device.models.interpreter import Backend, InterpreterFactory, invoke, load_interpreter, runtime_version
from device.models.manifest import ModelEntry, ModelFileError, Variant, verify_file

log = logging.getLogger(__name__)

CpuVariant = Literal["float", "int8"]
CPU_VARIANTS: tuple[CpuVariant, ...] = ("float", "int8")
DEFAULT_CPU_VARIANT: CpuVariant = "float"
CPU_VARIANT_CACHE = CPU_VARIANT_FILE
CPU_VARIANT_LOCK = ".cpu_variant.lock"

WARMUP_PAIRS = 3  # the first runs pay for allocation and XNNPACK weight packing
BLOCKS = 5  # the probe in consecutive parts: a file must win in all of them but one
MIN_PAIRS_PER_BLOCK = 3  # the fastest of fewer runs may still be a disturbed one
MAX_PAIRS_PER_BLOCK = 40  # fast models: more pairs add nothing once the fastest runs have settled

Timer = Callable[[], float]
RunOnce = Callable[[], object]


@dataclass(frozen=True)
class VariantTiming:
    """Interleaved single inferences of the two CPU files of one model: the fastest run of each over the
    whole probe and, per block, how many times faster int8's fastest run was than float's.

    The fastest, not the median: other work on the machine only ever adds time to a run, and it adds
    about the same milliseconds to either file, which squeezes a median ratio towards 1 (measured under
    bursty load: the embedder's int8 speed-up read 1.48-3.88x by medians, 1.98-2.86x by fastest runs, and
    one start in eight fell inside the margin). The fastest run is the least disturbed one."""

    float_ms: float
    int8_ms: float
    pairs: int
    block_speedups: tuple[float, ...]

    @property
    def int8_speedup(self) -> float:
        """How many times faster int8 is than float over the whole probe (below 1: float is faster)."""
        return speedup(self.float_ms, self.int8_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "float_ms": round(self.float_ms, 3),
            "int8_ms": round(self.int8_ms, 3),
            "pairs": self.pairs,
            "int8_speedup": round(self.int8_speedup, 3),
            "block_int8_speedups": [round(value, 3) for value in self.block_speedups],
        }

    @classmethod
    def parse(cls, data: object) -> VariantTiming | None:
        if not isinstance(data, dict):
            return None
        try:
            blocks = tuple(float(value) for value in data["block_int8_speedups"])
            return cls(float(data["float_ms"]), float(data["int8_ms"]), int(data["pairs"]), blocks)
        except (KeyError, TypeError, ValueError):
            return None


def speedup(float_ms: float, int8_ms: float) -> float:
    return float_ms / int8_ms if int8_ms > 0 else float("inf")


# Why a CPU file was chosen, in one word (health carries this, the sentence is in the log and the bench):
# set in the config, the only CPU file, faster beyond the margin, or within the margin and so the
# previous choice or the default.
ChoiceBasis = Literal["config", "only_file", "faster", "previous", "default", ""]


@dataclass(frozen=True)
class CpuChoice:
    variant: CpuVariant
    reason: str
    timing: VariantTiming | None = None
    basis: ChoiceBasis = ""


def pairs_per_block(pair_ms: float, budget_s: float) -> int:
    """How many timed pairs per block fit in ``budget_s`` when one pair takes ``pair_ms``, bounded."""
    fitting = int(budget_s * 1000.0 / (pair_ms * BLOCKS)) if pair_ms > 0 else MAX_PAIRS_PER_BLOCK
    return max(MIN_PAIRS_PER_BLOCK, min(MAX_PAIRS_PER_BLOCK, fitting))


def time_interleaved(
    run_float: RunOnce, run_int8: RunOnce, *, timer: Timer, budget_s: float
) -> VariantTiming:
    """Float and int8 timed in alternation, in blocks; the warm-up's last pair sizes the blocks."""

    def timed(run: RunOnce) -> float:
        start = timer()
        run()
        return (timer() - start) * 1000.0

    pair_ms = 0.0
    for _ in range(WARMUP_PAIRS):
        pair_ms = timed(run_float) + timed(run_int8)
    per_block = pairs_per_block(pair_ms, budget_s)
    float_samples: list[float] = []
    int8_samples: list[float] = []
    block_speedups = []
    for _ in range(BLOCKS):
        block_float: list[float] = []
        block_int8: list[float] = []
        for index in range(per_block):
            # Alternating which goes first: a file that always ran right after the other could
            # inherit its cache state or a frequency step.
            order = ((run_float, block_float), (run_int8, block_int8))
            for run, samples in order if index % 2 == 0 else order[::-1]:
                samples.append(timed(run))
        block_speedups.append(speedup(min(block_float), min(block_int8)))
        float_samples += block_float
        int8_samples += block_int8
    return VariantTiming(
        min(float_samples),
        min(int8_samples),
        per_block * BLOCKS,
        tuple(block_speedups),
    )


def margin_rule(timing: VariantTiming, *, previous: CpuVariant | None, margin: float) -> CpuChoice:
    """The file faster by ``margin`` or more in all blocks but one; else the previous choice, else float."""
    ranked = sorted(timing.block_speedups)
    slowest, fastest = ranked[0], ranked[-1]
    # the blocks that count: all but the one most favourable to the file that would win
    int8_at_least, int8_at_most = ranked[min(1, len(ranked) - 1)], ranked[max(0, len(ranked) - 2)]
    margin_text = f"margin {margin:.0%}"
    if int8_at_least >= 1.0 + margin:
        ratio = timing.int8_speedup
        return CpuChoice("int8", f"int8 {ratio:.2f}x faster than float ({margin_text})", timing, "faster")
    if int8_at_most <= 1.0 / (1.0 + margin):
        ratio = 1.0 / timing.int8_speedup
        return CpuChoice("float", f"float {ratio:.2f}x faster than int8 ({margin_text})", timing, "faster")
    within = f"int8 {slowest:.2f}-{fastest:.2f}x float, within the {margin_text}"
    if previous is not None:
        return CpuChoice(previous, f"{within}: kept previous {previous}", timing, "previous")
    default = DEFAULT_CPU_VARIANT
    return CpuChoice(default, f"{within}: no previous choice, default {default}", timing, "default")


@dataclass(frozen=True)
class RememberedChoice:
    """What ``cpu_variant.json`` holds for one model: the choice and what it was measured for."""

    key: str
    variant: CpuVariant
    reason: str
    timing: VariantTiming | None
    basis: ChoiceBasis = ""

    @classmethod
    def parse(cls, data: object) -> RememberedChoice | None:
        if not isinstance(data, dict) or data.get("variant") not in CPU_VARIANTS:
            return None
        timing = VariantTiming.parse(data.get("timing"))
        basis: ChoiceBasis = next(
            (known for known in get_args(ChoiceBasis) if known == data.get("basis")), ""
        )
        return cls(str(data.get("key", "")), data["variant"], str(data.get("reason", "")), timing, basis)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "variant": self.variant,
            "reason": self.reason,
            "timing": None if self.timing is None else self.timing.as_dict(),
            "basis": self.basis,
        }


def choice_state_dir(unit_state_dir: Path) -> Path | None:
    """Where a unit keeps its choices: its state dir when the config named one that exists. The
    relative default means no unit config was given (a CLI run from a checkout): nothing is kept."""
    return unit_state_dir if unit_state_dir.is_absolute() and unit_state_dir.is_dir() else None


class ChoiceStore:
    """The per-model CPU choices of one unit, in ``<state_dir>/cpu_variant.json`` (none without a dir)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / CPU_VARIANT_CACHE if state_dir is not None else None

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(read_unit_file(self.path))
        except (OSError, ValueError, RecursionError, UnsafeFileError):
            return {}  # no file yet, a damaged or planted one: as if nothing had been chosen
        return data if isinstance(data, dict) else {}

    def get(self, name: str) -> RememberedChoice | None:
        return RememberedChoice.parse(self._read().get(name))

    def put(self, name: str, remembered: RememberedChoice) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The unit and a CLI command may both choose at first start: one must not drop the other's.
            with exclusive_lock(self.path.with_name(CPU_VARIANT_LOCK)):
                choices = self._read()
                choices[name] = remembered.as_dict()
                text = json.dumps(choices, indent=2, sort_keys=True) + "\n"
                write_atomically(self.path, text.encode())  # private, like every file of the unit
        except OSError as error:
            log.warning("cannot keep the CPU variant choice in %s: %s", self.path, error)


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
    timer: Timer = time.perf_counter,
) -> CpuChoice:
    """The CPU file for ``name``: from the config, the one measured earlier for the same files, machine
    and runtime, or timed now and chosen by the margin rule (:func:`margin_rule`)."""
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
    choice = margin_rule(timing, previous=previous, margin=models.cpu_variant_margin)
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
