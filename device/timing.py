"""Per-stage latencies: recent durations for health (median, p95) and totals for the benchmark."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

LATENCY_WINDOW = 600  # samples per stage kept for median/p95: ~40 s of frames at 15 fps


class LatencyRecorder:
    """Recent per-stage durations in milliseconds, for health (median, p95) and the benchmark."""

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._totals: dict[str, float] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            samples = self._samples.get(stage)
            if samples is None:
                samples = self._samples[stage] = deque(maxlen=self._window)
            samples.append(ms)
            self._totals[stage] = self._totals.get(stage, 0.0) + ms
            self._counts[stage] += 1

    def time(self, stage: str) -> StageTimer:
        """``with recorder.time("detect"): ...`` records the block's duration (also when it raises)."""
        return StageTimer(self, stage)

    def reset(self) -> None:
        """Forgets every sample (the benchmark measures its runs one by one on the same models)."""
        with self._lock:
            self._samples.clear()
            self._totals.clear()
            self._counts.clear()

    def total_ms(self, stage: str) -> float:
        with self._lock:
            return self._totals.get(stage, 0.0)

    def count(self, stage: str) -> int:
        with self._lock:
            return int(self._counts[stage])

    def samples(self, stage: str) -> list[float]:
        with self._lock:
            return list(self._samples.get(stage, ()))

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            stages = {name: list(values) for name, values in self._samples.items() if values}
        return {name: percentiles(values) for name, values in sorted(stages.items())}


class StageTimer:
    """The context manager behind ``LatencyRecorder.time``: a plain class, because a generator-based one
    costs several microseconds per block, several blocks per frame."""

    __slots__ = ("_recorder", "_stage", "_start")

    def __init__(self, recorder: LatencyRecorder, stage: str) -> None:
        self._recorder = recorder
        self._stage = stage
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self._recorder.add(self._stage, (time.perf_counter() - self._start) * 1000.0)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": round(statistics.median(ordered), 3), "p95_ms": round(p95, 3), "n": len(ordered)}


class TimedModel:
    """Wraps an ``InferenceModel`` so that every ``run`` is recorded as ``<role>_inference``.

    The sum of these is the pure-inference bound the benchmark compares the whole pipeline against.
    """

    def __init__(self, model: Any, role: str, recorder: LatencyRecorder) -> None:
        self._model = model
        self._stage = f"{role}_inference"
        self._recorder = recorder

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        start = time.perf_counter()
        try:
            outputs: list[NDArray[np.float32]] = self._model.run(batch)
        finally:
            self._recorder.add(self._stage, (time.perf_counter() - start) * 1000.0)
        return outputs

    def run_pixels(self, pixels: NDArray[np.uint8], mean: float, std: float) -> list[NDArray[np.float32]]:
        start = time.perf_counter()
        try:
            outputs: list[NDArray[np.float32]] = self._model.run_pixels(pixels, mean, std)
        finally:
            self._recorder.add(self._stage, (time.perf_counter() - start) * 1000.0)
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
