"""CPU latency of one model, measured the same way for every model the unit ships."""

from __future__ import annotations

import statistics
import time

import numpy as np

from device.models.accelerator import InferenceModel

LATENCY_RUNS = 50  # issue 3: median of 50 single inferences
LATENCY_WARMUP = 5  # first runs pay for allocation and XNNPACK packing; they are not the steady state


def median_latency_ms(
    model: InferenceModel, input_range: tuple[float, float], runs: int = LATENCY_RUNS
) -> float:
    """Median of ``runs`` single inferences after a warm-up, on a random input in ``input_range``."""
    low, high = input_range
    batch = np.random.default_rng(0).uniform(low, high, model.input_shape).astype(np.float32)
    for _ in range(LATENCY_WARMUP):
        model.run(batch)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(batch)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)
