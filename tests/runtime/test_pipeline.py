"""The whole per-frame chain on a generated entrance clip, with the shipped models on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import init_unit
from pipeline_support import (
    RecordingPublisher,
    clip_frames,
    embeddings_of,
    entrance_clip,
    published_health,
    unit_config,
)

from device.cli import main
from device.config import UnitConfig
from device.identity.decide import Reason
from device.identity.gallery_store import EnrolRequest
from device.identity.live_gallery import LiveGallery
from device.identity.match import GalleryView, InMemoryGallery
from device.lab.democlip import DemoClip
from device.layout import StateLayout
from device.runtime.pipeline import Pipeline, Runner
from device.runtime.service import build_runner
from device.types import Decision, DecisionType, Frame
from device.vision.capture.file import FileSource
from device.vision.capture.thread import CaptureThread
from device.vision.faces import FaceAnalyzer, Stages


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, analyzer: FaceAnalyzer) -> tuple[DemoClip, list[Frame]]:
    path = tmp_path_factory.mktemp("clip") / "entrance.avi"
    made = entrance_clip(path, analyzer, [("resident", "obama.jpg"), ("visitor", "biden.jpg")])
    return made, clip_frames(path)


@pytest.fixture(scope="module")
def resident_gallery(analyzer: FaceAnalyzer) -> InMemoryGallery:
    gallery = InMemoryGallery()
    gallery.enrol("resident", embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"))
    return gallery


def run_clip(
    frames: list[Frame], stages: Stages, gallery: GalleryView, config: UnitConfig | None = None
) -> tuple[Pipeline, RecordingPublisher, list[tuple[int, Decision]]]:
    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(config or unit_config(), stages, gallery=gallery, publisher=publisher)
    timeline = [(frame.seq, decision) for frame in frames for decision in pipeline.process(frame)]
    timeline += [(len(frames), decision) for decision in pipeline.finish()]
    return pipeline, publisher, timeline


ClipResult = tuple[Pipeline, RecordingPublisher, list[tuple[int, Decision]]]


@pytest.fixture(scope="module")
def default_run(
    clip: tuple[DemoClip, list[Frame]], stages: Stages, resident_gallery: InMemoryGallery
) -> ClipResult:
    """The default config over the whole clip, once for the tests that only look at its outcome."""
    return run_clip(clip[1], stages, resident_gallery)


def test_each_visit_gives_one_decision_the_resident_recognised_the_visitor_not(
    clip: tuple[DemoClip, list[Frame]], default_run: ClipResult
) -> None:
    made, _ = clip
    _, publisher, timeline = default_run
    assert publisher.decisions == [decision for _, decision in timeline]
    assert [decision.type for _, decision in timeline] == [DecisionType.RECOGNIZED, DecisionType.UNKNOWN]
    resident, visitor = (decision for _, decision in timeline)
    assert resident.subject_id == "resident"
    assert resident.similarity is not None and resident.similarity >= unit_config().matching.threshold
    assert visitor.subject_id is None and visitor.reasons == (Reason.BELOW_THRESHOLD.value,)
    assert resident.track_id != visitor.track_id
    # Each decision is made while (or just after) its own visit is in view, not at the end of the clip.
    for (frame, _), span in zip(timeline, made.visits, strict=True):
        assert span.first_frame <= frame <= span.last_frame + unit_config().tracking.max_lost_frames + 1


def test_the_motion_gate_keeps_the_detector_off_while_the_entrance_is_empty(
    clip: tuple[DemoClip, list[Frame]],
    stages: Stages,
    resident_gallery: InMemoryGallery,
    default_run: ClipResult,
) -> None:
    made, frames = clip
    pipeline, _, _ = default_run
    visit_frames = sum(span.last_frame - span.first_frame + 1 for span in made.visits)
    empty_frames = len(frames) - visit_frames
    assert pipeline.frames == len(frames)
    assert pipeline.motion_skips + pipeline.detector_runs == len(frames)
    # The detector runs on the visits, on the first frame, and while a track is being closed; the rest of
    # the empty entrance is skipped.
    track_tail = unit_config().tracking.max_lost_frames + 1
    assert pipeline.motion_skips >= empty_frames - 1 - track_tail * len(made.visits)
    ungated, _, _ = run_clip(frames, stages, resident_gallery, unit_config(motion={"enabled": False}))
    assert ungated.detector_runs == len(frames)


def test_nothing_about_a_visit_is_kept_after_its_decision(default_run: ClipResult) -> None:
    pipeline, _, timeline = default_run
    assert len(timeline) == 2
    assert pipeline.active_tracks == 0
    assert pipeline._book.visits == {}
    for _, decision in timeline:  # decisions carry no pixels, boxes or vectors
        assert not any(isinstance(value, np.ndarray) for value in vars(decision).values())


def test_without_a_gallery_every_visit_is_unknown_and_the_pipeline_keeps_running(
    clip: tuple[DemoClip, list[Frame]], stages: Stages, tmp_path: Path
) -> None:
    _, frames = clip
    gallery = LiveGallery(tmp_path / "gallery.enc", tmp_path / "missing-master.key")
    pipeline, _, timeline = run_clip(frames, stages, gallery)
    assert [decision.type for _, decision in timeline] == [DecisionType.UNKNOWN, DecisionType.UNKNOWN]
    assert all(decision.reasons == (Reason.NO_GALLERY.value,) for _, decision in timeline)
    assert pipeline.health()["gallery"]["gallery_state"] == "no_gallery"
    # A plain master key file (key_source "file", the default) is reported as unprotected.
    assert "master_key_unprotected" in pipeline.health()["alarms"]
    assert "gallery_unavailable" in pipeline.health()["alarms"]


def test_armed_mode_matches_nobody_without_a_claim_and_verifies_the_claimed_resident(
    clip: tuple[DemoClip, list[Frame]], stages: Stages, resident_gallery: InMemoryGallery
) -> None:
    _, frames = clip
    armed = unit_config(matching={"require_claim": True, "claim_window_s": 600.0})
    pipeline, publisher, _ = run_clip(frames, stages, resident_gallery, armed)
    assert publisher.decisions == []
    assert pipeline.detector_runs == 0  # without a pending claim nobody is even looked at

    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(armed, stages, gallery=resident_gallery, publisher=publisher)
    pipeline.claim("resident")
    for frame in frames:
        pipeline.process(frame)
    pipeline.finish()
    assert len(publisher.decisions) == 1  # the claim is used up by the resident's visit
    decision = publisher.decisions[0]
    assert decision.type is DecisionType.RECOGNIZED and decision.subject_id == "resident"
    assert decision.reasons == (Reason.CLAIM_VERIFIED.value,)


def test_health_reports_rates_latencies_and_the_models_device(
    clip: tuple[DemoClip, list[Frame]], default_run: ClipResult
) -> None:
    _, frames = clip
    pipeline, _, _ = default_run
    health = pipeline.health()
    assert health["frames_processed"] == len(frames)
    assert health["decisions"] == {"recognized": 1, "unknown": 1}
    for stage in ("motion", "detect", "track", "quality", "align", "embed", "match", "frame"):
        median_ms, p95_ms, count = health["stage_ms"][stage]
        assert 0 < median_ms <= p95_ms and count >= 1, stage
    assert set(health["accelerator"]) == {"detector", "embedder"}
    assert health["accelerator"]["detector"].startswith("cpu")
    variant, basis, _ = health["models"]["embedder"]  # the CPU file, why, the int8 speed-up measured
    assert variant in ("float", "int8") and basis


def test_the_health_report_fits_the_published_health_schema(
    clip: tuple[DemoClip, list[Frame]], stages: Stages, tmp_path: Path
) -> None:
    _, frames = clip
    gallery = LiveGallery(tmp_path / "gallery.enc", tmp_path / "missing-master.key")
    pipeline, _, _ = run_clip(frames[:40], stages, gallery)
    health, problems = published_health(pipeline.health())
    assert problems == []
    assert health["pipeline"]["frames_processed"] == 40
    assert "gallery_unavailable" in health["alarms"]  # no key: the unit says so instead of failing


def test_the_service_health_carries_the_cpu_temperature_within_the_published_schema(
    stages: Stages, tmp_path: Path
) -> None:
    config = UnitConfig()
    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(config, stages, gallery=InMemoryGallery(), publisher=publisher)
    capture = CaptureThread(FileSource(tmp_path / "no-clip.avi"), config.capture.reconnect_backoff_max_s)
    runner = Runner(pipeline, capture, publisher, stop_event=threading.Event(), cpu_temperature=lambda: 61.5)
    health, problems = published_health(runner.health())
    assert problems == []
    assert health["pipeline"]["cpu_temp_c"] == 61.5


@pytest.mark.slow
def test_a_claim_dropped_by_device_claim_reaches_the_running_unit_in_armed_mode(
    clip: tuple[DemoClip, list[Frame]], stages: Stages, analyzer: FaceAnalyzer, tmp_path: Path
) -> None:
    made, _ = clip
    unit = init_unit(tmp_path)
    with unit.config_path.open("a") as config_file:
        config_file.write(
            f'\n[capture]\nbackend = "file"\nsource = "{made.path}"\nrealtime = false\n'
            "\n[matching]\nrequire_claim = true\nclaim_window_s = 600.0\n"
        )
    config = unit.config
    resident = unit.store().enrol(
        EnrolRequest(
            name="Resident",
            templates=embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"),
            consent_reference="FORM-7",
            operator="tester",
            purpose_version="v1",
        )
    )
    assert main(["claim", resident.subject_id, "--config", str(unit.config_path)]) == 0
    publisher = RecordingPublisher()
    runner = build_runner(config, stages=stages, publisher=publisher, stop_event=threading.Event())
    assert runner.run() == 0
    assert [(d.type, d.subject_id, d.reasons) for d in publisher.decisions] == [
        (DecisionType.RECOGNIZED, resident.subject_id, (Reason.CLAIM_VERIFIED.value,))
    ]
    assert list(StateLayout.from_config(config).claims.glob("*.claim")) == []  # the claim file was taken
