"""Shared by the pipeline tests: the shipped models, a generated entrance clip, a recording publisher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig, parse_config
from device.evaluation import fixtures
from device.events.payloads import HealthParts, build_health
from device.lab.bench import decoded_frames
from device.lab.democlip import DemoClip, Walk, make_clip
from device.types import Decision, Frame
from device.vision.faces import FaceAnalyzer, Stages, load_stages

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


def unit_config(**sections: Mapping[str, Any]) -> UnitConfig:
    data: dict[str, Any] = {"models": {"dir": str(MODELS), "accelerator": "cpu", "cpu_variant": "float"}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_config(data)


def shipped_stages(config: UnitConfig | None = None) -> Stages:
    return load_stages(config or unit_config())


def published_health(pipeline_health: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The health payload of a connected, idle unit around ``pipeline_health``, and the schema problems
    found in it (``device.events.payloads.build_health``)."""
    return build_health(idle_transport(), pipeline_health)


def embeddings_of(analyzer: FaceAnalyzer, *names: str) -> NDArray[np.float32]:
    vectors = []
    for name in names:
        face = analyzer.largest(fixtures.load_rgb(name))
        assert face is not None, f"no face in {name}"
        vectors.append(face.embedding)
    return np.stack(vectors)


def entrance_clip(path: Path, analyzer: FaceAnalyzer, people: list[tuple[str, str]]) -> DemoClip:
    """(label, fixture photo) per visit, alternating sides, empty entrance around each visit."""
    walks = [
        Walk(label, fixtures.load_rgb(photo), start_x=0.25 if index % 2 == 0 else 0.75, end_x=0.5)
        for index, (label, photo) in enumerate(people)
    ]
    return make_clip(path, walks, analyzer.detector.detect)


def clip_frames(path: Path) -> list[Frame]:
    """The clip's frames stamped as a 15 fps camera would stamp them."""
    return [Frame(image=image, ts=seq / 15.0, seq=seq) for seq, image in enumerate(decoded_frames(path))]


def idle_transport() -> HealthParts:
    """The publisher's part of a health report (nothing queued, broker connected, no command yet), for
    tests that check the pipeline's part against the published health schema."""
    return HealthParts(
        unit="lobby-1",
        uptime_s=1.0,
        outbox={"depth": 0, "bytes": 0, "dropped": 0, "last_seq": 0},
        mqtt={"connected": True, "reconnects": 0, "refused": 0},
        commands={"accepted": 0, "rejected": 0},
        alarms=[],
    )


@dataclass
class RecordingPublisher:
    decisions: list[Decision] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def publish_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def publish_health(self, health: Mapping[str, Any]) -> None:
        self.health.append(dict(health))

    def io_alive(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True
