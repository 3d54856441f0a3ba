"""PAD's cost in ``device bench``: CPU per visit and the delay it adds to a decision.

- ``pad_cpu_ms_per_visit``: process CPU time of the PAD stage per decided visit (texture CNNs + face mesh
  on the visit's best samples, frame edges, spectrum), median over the visits of the demo clip;
- ``pad_wall_ms_per_visit``: its wall time, median;
- ``added_delay_s``: from a resident's first good frame to the decision, with PAD against without: the
  decision's frame (at the clip's fps) plus PAD's own wall time on that frame; the target is at most
  0.5 s at 15 fps.
Frames come from memory stamped at the clip's fps, so the figures do not include decoding.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from device.config import UnitConfig
from device.identity.match import InMemoryGallery
from device.runtime.pipeline import Pipeline
from device.types import Decision, DecisionType, Frame, RgbImage
from device.vision.faces import Stages
from device.vision.liveness import Liveness, LivenessStage, PadSample

ADDED_DELAY_TARGET_S = 0.5


@dataclass
class TimedLiveness:
    """The PAD stage with each visit's CPU and wall time recorded."""

    stage: LivenessStage
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)

    def visit(self, samples: Sequence[PadSample]) -> Liveness:
        cpu, wall = time.process_time(), time.perf_counter()
        verdict = self.stage.visit(samples)
        self.cpu_ms.append((time.process_time() - cpu) * 1000.0)
        self.wall_ms.append((time.perf_counter() - wall) * 1000.0)
        return verdict


@dataclass
class Collector:
    decisions: list[tuple[int, Decision]] = field(default_factory=list)
    frame: int = 0

    def publish_decision(self, decision: Decision) -> None:
        self.decisions.append((self.frame, decision))

    def publish_health(self, health: Any) -> None:
        pass

    def io_alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


def decision_frames(
    config: UnitConfig, stages: Stages, frames: list[RgbImage], gallery: InMemoryGallery, pad: Any
) -> list[tuple[int, Decision]]:
    collector = Collector()
    pipeline = Pipeline.from_stages(config, stages, gallery=gallery, publisher=collector, liveness=pad)
    for seq, image in enumerate(frames):
        collector.frame = seq
        pipeline.process(Frame(image=image, ts=seq / config.capture.fps, seq=seq))
    collector.frame = len(frames)
    pipeline.finish()
    return collector.decisions


def pad_benchmark(
    config: UnitConfig,
    stages: Stages,
    frames: list[RgbImage],
    gallery: InMemoryGallery,
    stage: LivenessStage,
    repeats: int = 2,
) -> dict[str, Any]:
    """PAD's CPU per visit and added decision delay on the demo clip (best of ``repeats``)."""
    timed = TimedLiveness(stage)
    without = decision_frames(config, stages, frames, gallery, None)
    best_delay: float | None = None
    with_pad: list[tuple[int, Decision]] = []
    for _ in range(repeats):
        timed.cpu_ms.clear()
        timed.wall_ms.clear()
        with_pad = decision_frames(config, stages, frames, gallery, timed)
        first_with = next((f for f, d in with_pad if d.type is DecisionType.RECOGNIZED), None)
        first_without = next((f for f, d in without if d.type is DecisionType.RECOGNIZED), None)
        if first_with is None or first_without is None or not timed.wall_ms:
            continue
        delay = (first_with - first_without) / config.capture.fps + timed.wall_ms[0] / 1000.0
        best_delay = delay if best_delay is None else min(best_delay, delay)
    return {
        "pad_visits": len(timed.cpu_ms),
        "pad_cpu_ms_per_visit": round(statistics.median(timed.cpu_ms), 2) if timed.cpu_ms else None,
        "pad_wall_ms_per_visit": round(statistics.median(timed.wall_ms), 2) if timed.wall_ms else None,
        "pad_added_delay_s": None if best_delay is None else round(best_delay, 3),
        "pad_decisions_on_clip": [d.type.value for _, d in with_pad],
        "pad_added_delay_target_s": ADDED_DELAY_TARGET_S,
        "pad_added_delay_met": None if best_delay is None else best_delay <= ADDED_DELAY_TARGET_S,
    }
