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

The reason for each choice travels with it, into health and ``make bench``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from device.atomicio import exclusive_lock, write_atomically

log = logging.getLogger(__name__)

CpuVariant = Literal["float", "int8"]
CPU_VARIANTS: tuple[CpuVariant, ...] = ("float", "int8")
DEFAULT_CPU_VARIANT: CpuVariant = "float"
CPU_VARIANT_CACHE = "cpu_variant.json"
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


def decide(timing: VariantTiming, *, previous: CpuVariant | None, margin: float) -> CpuChoice:
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
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # no file yet, or a damaged one: as if nothing had been chosen
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
