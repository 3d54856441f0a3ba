"""The demo clip's outcome, pinned as it was before the per-frame work moved off the pipeline thread
(issue 16): the same decisions, at the same frames, with the same similarities and PAD scores (within
1e-4), whether the pipeline is driven frame by frame or by the service loop, whose capture thread prepares the
frames' views and whose pipeline detects the next frame on a worker thread.

The figures were recorded with the code of commit 88e0985 (the float and the int8 CPU files)."""

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

TOLERANCE = 1e-4


@dataclass(frozen=True)
class PinnedVisit:
    decided_at_frame: int
    track_id: int
    type: str
    subject_id: str | None
    similarity: float | None
    frames: int
    reasons: tuple[str, ...]
    pad_score: float
    pad_cues: dict[str, float | None]


PINNED: dict[str, tuple[PinnedVisit, ...]] = {
    "float": (
        PinnedVisit(
            19,
            1,
            "recognized",
            "resident",
            0.96604079,
            5,
            ("above_threshold",),
            0.9088,
            {"texture": 0.9928, "frame_edges": 1.0, "spectrum": 0.9088, "geometry": None, "blink": None},
        ),
        PinnedVisit(
            70,
            2,
            "unknown",
            None,
            0.82271022,
            5,
            ("below_threshold",),
            0.8,
            {"texture": 0.9743, "frame_edges": 0.8, "spectrum": 0.9319, "geometry": None, "blink": None},
        ),
        PinnedVisit(
            129,
            3,
            "presentation_attack",
            None,
            None,
            13,
            ("pad_texture", "pad_frame_edges"),
            0.0,
            {"texture": 0.4674, "frame_edges": 0.0, "spectrum": 0.881, "geometry": None, "blink": None},
        ),
    ),
    "int8": (
        PinnedVisit(
            19,
            1,
            "recognized",
            "resident",
            0.96501464,
            5,
            ("above_threshold",),
            0.9093,
            {"texture": 0.9945, "frame_edges": 1.0, "spectrum": 0.9093, "geometry": None, "blink": None},
        ),
        PinnedVisit(
            70,
            2,
            "unknown",
            None,
            0.82414931,
            5,
            ("below_threshold",),
            0.9523,
            {"texture": 0.9796, "frame_edges": 1.0, "spectrum": 0.9523, "geometry": None, "blink": None},
        ),
        PinnedVisit(
            129,
            3,
            "presentation_attack",
            None,
            None,
            13,
            ("pad_texture", "pad_frame_edges"),
            0.2,
            {"texture": 0.4493, "frame_edges": 0.2, "spectrum": 0.8665, "geometry": None, "blink": None},
        ),
    ),
}
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


def assert_as_pinned(decisions: list[Decision], pinned: tuple[PinnedVisit, ...]) -> None:
    assert len(decisions) == len(pinned)
    for decision, visit in zip(decisions, pinned, strict=True):
        assert decision.track_id == visit.track_id
        assert decision.type.value == visit.type
        assert decision.subject_id == visit.subject_id
        if visit.similarity is None:
            assert decision.similarity is None
        else:
            assert decision.similarity == pytest.approx(visit.similarity, abs=TOLERANCE)
        assert decision.frames == visit.frames
        assert decision.reasons == visit.reasons
        assert decision.pad is not None
        assert decision.pad.score == pytest.approx(visit.pad_score, abs=TOLERANCE)
        assert decision.pad.cues.keys() == visit.pad_cues.keys()
        for cue, score in visit.pad_cues.items():
            assert decision.pad.cues[cue] == (None if score is None else pytest.approx(score, abs=TOLERANCE))


def variant_of(demo: DemoSetting) -> str:
    return demo.config.models.cpu_variant


def test_frame_by_frame_the_demo_clip_is_decided_as_before(demo: DemoSetting) -> None:
    publisher = RecordingPublisher()
    pipeline = pipeline_for(demo, publisher)
    frames = clip_frames(demo.clip)
    timeline = [(frame.seq, decision) for frame in frames for decision in pipeline.process(frame)]
    timeline += [(len(frames), decision) for decision in pipeline.finish()]
    pinned = PINNED[variant_of(demo)]
    assert [seq for seq, _ in timeline] == [visit.decided_at_frame for visit in pinned]
    assert_as_pinned([decision for _, decision in timeline], pinned)
    assert pipeline.detector_runs == PINNED_DETECTOR_RUNS


@pytest.mark.parametrize("detect_ahead", [True, False], ids=["detect-ahead", "one-thread"])
def test_the_service_loop_decides_the_demo_clip_as_before(demo: DemoSetting, detect_ahead: bool) -> None:
    """With the views prepared on the capture thread, and detection made ahead on the worker thread or
    on the pipeline thread."""
    publisher = RecordingPublisher()
    pipeline = pipeline_for(demo, publisher)
    views = ViewSpec.for_unit(demo.config, demo.stages.detector.input_size)
    capture = CaptureThread(FileSource(demo.clip), buffer_capacity=2, views=views)
    runner = Runner(pipeline, capture, publisher, stop_event=threading.Event(), detect_ahead=detect_ahead)
    assert runner.run() == 0
    assert_as_pinned(publisher.decisions, PINNED[variant_of(demo)])
    assert pipeline.detector_runs == PINNED_DETECTOR_RUNS
    # the overlap did happen (how often depends on the decoder's pace), or not at all
    assert (pipeline.health()["detected_ahead"] > 0) is detect_ahead
