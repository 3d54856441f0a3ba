"""The demo clip's outcome: the same decisions at the same frames, whichever way the pipeline is driven.

Two kinds of check, on the float and the int8 CPU files:
- behaviour, pinned: who was decided what at which frame, and by how much: the resident's similarity
  clears the threshold by a margin, the visitor's misses it by one, the print fails the cues named and
  the live visits pass every cue. The margins are about a third of what the shipped models show here
  (resident +0.045, visitor -0.097, print's texture 0.03-0.05 under its threshold), so another CPU
  (the Pi's aarch64), another TFLite build or the other CPU file cannot fail them without a real change.
- the paths against each other: the service loop (views prepared on the capture thread; detection ahead
  on a worker thread, or not) decides exactly what the frame-by-frame pipeline decides, to 1e-6: same
  code, same machine, so any difference is a bug in the threading, not arithmetic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from pipeline_support import RecordingPublisher, clip_frames, embeddings_of, unit_config

from device.config import UnitConfig
from device.identity.match import InMemoryGallery
from device.lab.demo import make_demo_clip
from device.runtime.pipeline import Pipeline, Runner
from device.types import Decision
from device.vision.capture.file import FileSource
from device.vision.capture.thread import CaptureThread
from device.vision.faces import FaceAnalyzer, Stages, load_stages
from device.vision.liveness import LivenessStage, open_liveness
from device.vision.views import ViewSpec

SAME_ARITHMETIC = 1e-6
SIMILARITY_MARGIN = 0.015  # of the matching threshold, either side
TEXTURE_MARGIN = 0.01  # the print's texture score under its threshold
LIVE_CUE_FLOOR = 0.75  # every voting cue of a live visit scores at least this (0.80-0.99 here)


@dataclass(frozen=True)
class PinnedVisit:
    decided_at_frame: int
    track_id: int
    type: str
    subject_id: str | None
    frames: int
    reasons: tuple[str, ...]


PINNED = (
    PinnedVisit(19, 1, "recognized", "resident", 5, ("above_threshold",)),
    PinnedVisit(70, 2, "unknown", None, 5, ("below_threshold",)),
    PinnedVisit(129, 3, "presentation_attack", None, 13, ("pad_texture", "pad_frame_edges")),
)
PINNED_DETECTOR_RUNS = 136  # the motion gate let the detector run on 136 of the clip's frames


@dataclass(frozen=True)
class DemoSetting:
    config: UnitConfig
    stages: Stages
    clip: Path
    gallery: InMemoryGallery
    liveness: LivenessStage


@pytest.fixture(scope="module", params=["float", "int8"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoSetting:
    config = unit_config(models={"cpu_variant": request.param})
    stages = load_stages(config)
    analyzer = FaceAnalyzer.from_stages(stages)
    clip = make_demo_clip(tmp_path_factory.mktemp(f"demo-{request.param}"), analyzer)
    gallery = InMemoryGallery()
    gallery.enrol("resident", embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"))
    liveness = open_liveness(config)
    assert liveness is not None
    return DemoSetting(config, stages, clip.path, gallery, liveness)


def pipeline_for(demo: DemoSetting, publisher: RecordingPublisher) -> Pipeline:
    return Pipeline.from_stages(
        demo.config, demo.stages, gallery=demo.gallery, publisher=publisher, liveness=demo.liveness
    )


def assert_as_pinned(decisions: list[Decision], config: UnitConfig) -> None:
    assert [(d.track_id, d.type.value, d.subject_id, d.frames, d.reasons) for d in decisions] == [
        (v.track_id, v.type, v.subject_id, v.frames, v.reasons) for v in PINNED
    ]
    resident, visitor, attack = decisions
    threshold = config.matching.threshold
    assert resident.similarity is not None and resident.similarity >= threshold + SIMILARITY_MARGIN
    assert visitor.similarity is not None and visitor.similarity <= threshold - SIMILARITY_MARGIN
    for live in (resident, visitor):
        assert live.pad is not None and live.pad.passed is True
        voting = [score for score in live.pad.cues.values() if score is not None]
        assert voting and min(voting) >= LIVE_CUE_FLOOR, live.pad.cues
    assert attack.similarity is None and attack.pad is not None and attack.pad.passed is False
    texture = attack.pad.cues["texture"]
    assert texture is not None and texture <= config.liveness.texture_threshold - TEXTURE_MARGIN
    assert attack.pad.cues["frame_edges"] == pytest.approx(0.0, abs=0.25)  # framed on (nearly) every side


def assert_the_same(decisions: list[Decision], reference: list[Decision]) -> None:
    """Exactly the same outcome, scores to the last bits the arithmetic can differ in."""
    assert len(decisions) == len(reference)
    for decision, expected in zip(decisions, reference, strict=True):
        assert (decision.track_id, decision.type, decision.subject_id, decision.frames, decision.reasons) == (
            expected.track_id, expected.type, expected.subject_id, expected.frames, expected.reasons
        )  # fmt: skip
        assert decision.similarity == pytest.approx(expected.similarity, abs=SAME_ARITHMETIC)
        assert decision.pad is not None and expected.pad is not None
        assert decision.pad.cues == pytest.approx(expected.pad.cues, abs=SAME_ARITHMETIC)


def frame_by_frame(demo: DemoSetting) -> tuple[list[tuple[int, Decision]], Pipeline]:
    publisher = RecordingPublisher()
    pipeline = pipeline_for(demo, publisher)
    frames = clip_frames(demo.clip)
    timeline = [(frame.seq, decision) for frame in frames for decision in pipeline.process(frame)]
    timeline += [(len(frames), decision) for decision in pipeline.finish()]
    return timeline, pipeline


@pytest.fixture(scope="module")
def reference(demo: DemoSetting) -> list[Decision]:
    return [decision for _, decision in frame_by_frame(demo)[0]]


@pytest.mark.slow
def test_frame_by_frame_the_demo_clip_is_decided_as_pinned(demo: DemoSetting) -> None:
    timeline, pipeline = frame_by_frame(demo)
    assert [seq for seq, _ in timeline] == [visit.decided_at_frame for visit in PINNED]
    assert_as_pinned([decision for _, decision in timeline], demo.config)
    assert pipeline.detector_runs == PINNED_DETECTOR_RUNS


@pytest.mark.parametrize("detect_ahead", [True, False], ids=["detect-ahead", "one-thread"])
@pytest.mark.slow
def test_the_service_loop_decides_the_demo_clip_as_frame_by_frame(
    demo: DemoSetting, reference: list[Decision], detect_ahead: bool
) -> None:
    """With the views prepared on the capture thread, and detection made ahead on the worker thread or
    on the pipeline thread."""
    publisher = RecordingPublisher()
    pipeline = pipeline_for(demo, publisher)
    views = ViewSpec.for_unit(demo.config, demo.stages.detector.input_size)
    capture = CaptureThread(FileSource(demo.clip), buffer_capacity=2, views=views)
    runner = Runner(pipeline, capture, publisher, stop_event=threading.Event(), detect_ahead=detect_ahead)
    assert runner.run() == 0
    assert_the_same(publisher.decisions, reference)
    assert_as_pinned(publisher.decisions, demo.config)
    assert pipeline.detector_runs == PINNED_DETECTOR_RUNS
    # the overlap did happen (how often depends on the decoder's pace), or not at all
    assert (pipeline.health()["detected_ahead"] > 0) is detect_ahead
