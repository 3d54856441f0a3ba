"""PAD in the pipeline: a print of an enrolled resident held up to the camera is a presentation attack,
never a recognition; the resident in person still is recognised; report/off modes; what the event says."""

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

from device.config import UnitConfig
from device.evaluation import fixtures
from device.events.payloads import build_event
from device.identity.gallery_store import EnrolRequest
from device.identity.live_gallery import LiveGallery
from device.identity.match import InMemoryGallery
from device.lab.democlip import write_mjpeg
from device.lab.padattacks import attack_clip_frames, draw_params
from device.runtime.pipeline import Pipeline, Runner
from device.types import Decision, DecisionType, Frame
from device.vision.capture.file import FileSource
from device.vision.capture.thread import CaptureThread
from device.vision.faces import FaceAnalyzer, Stages
from device.vision.liveness import LivenessStage, open_liveness

MODELS = {"detector": "blazeface_full_range@float", "embedder": "dlib_resnet_v1@float"}


@pytest.fixture(scope="module")
def liveness() -> LivenessStage:
    stage = open_liveness(unit_config())
    assert stage is not None
    return stage


@pytest.fixture(scope="module")
def gallery(analyzer: FaceAnalyzer) -> InMemoryGallery:
    enrolled = InMemoryGallery()
    enrolled.enrol("resident", embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"))
    return enrolled


@pytest.fixture(scope="module")
def print_attack(tmp_path_factory: pytest.TempPathFactory, analyzer: FaceAnalyzer) -> list[Frame]:
    """A printed photo of the resident (not one the gallery was enrolled from) moved towards the camera."""
    photo = fixtures.load_rgb("obama.jpg")
    face = analyzer.largest(photo)
    assert face is not None
    path = tmp_path_factory.mktemp("attack") / "print.avi"
    params = draw_params(np.random.default_rng(5))
    write_mjpeg(path, attack_clip_frames(photo, face.detection.box, "print_clip", params), 15.0, (640, 480))
    return clip_frames(path)


@pytest.fixture(scope="module")
def resident_visit(tmp_path_factory: pytest.TempPathFactory, analyzer: FaceAnalyzer) -> list[Frame]:
    path = tmp_path_factory.mktemp("bona_fide") / "resident.avi"
    entrance_clip(path, analyzer, [("resident", "obama.jpg")])
    return clip_frames(path)


def run(
    frames: list[Frame],
    config: UnitConfig,
    stages: Stages,
    gallery: InMemoryGallery,
    pad: LivenessStage,
    claim: str | None = None,
) -> list[Decision]:
    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(config, stages, gallery=gallery, publisher=publisher, liveness=pad)
    if claim is not None:
        pipeline.claim(claim)
    for frame in frames:
        pipeline.process(frame)
    pipeline.finish()
    return publisher.decisions


def test_the_print_is_recognised_without_pad(
    print_attack: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    """The attack works on a unit without PAD: what the next test defends against is real."""
    decisions = run(print_attack, unit_config(liveness={"mode": "off"}), stages, gallery, liveness)
    assert [d.type for d in decisions] == [DecisionType.RECOGNIZED]


def test_a_print_attack_clip_is_a_presentation_attack_never_recognized(
    print_attack: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    decisions = run(print_attack, unit_config(), stages, gallery, liveness)
    assert [d.type for d in decisions] == [DecisionType.PRESENTATION_ATTACK]
    attack = decisions[0]
    assert attack.subject_id is None and attack.similarity is None  # default: nobody is named
    assert attack.reasons and all(reason.startswith("pad_") for reason in attack.reasons)
    assert attack.pad is not None and attack.pad.passed is False
    event = build_event(attack, seq=1, unit="lobby-1", models=MODELS, gallery_version="1")
    assert event["type"] == "presentation_attack" and event["subject"] is None
    assert event["liveness"]["passed"] is False
    assert set(event["liveness"]["cues"]) >= {"texture", "frame_edges", "spectrum"}


def test_naming_the_impersonated_resident_is_a_config_choice(
    print_attack: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    config = unit_config(liveness={"name_attacked_subject": True})
    decisions = run(print_attack, config, stages, gallery, liveness)
    assert [(d.type, d.subject_id) for d in decisions] == [(DecisionType.PRESENTATION_ATTACK, "resident")]


def test_report_mode_keeps_the_decision_and_carries_the_scores(
    print_attack: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    decisions = run(print_attack, unit_config(liveness={"mode": "report"}), stages, gallery, liveness)
    assert [d.type for d in decisions] == [DecisionType.RECOGNIZED]
    assert decisions[0].pad is not None and decisions[0].pad.passed is False


def test_the_resident_in_person_is_still_recognised(
    resident_visit: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    decisions = run(resident_visit, unit_config(), stages, gallery, liveness)
    assert [(d.type, d.subject_id) for d in decisions] == [(DecisionType.RECOGNIZED, "resident")]
    assert decisions[0].pad is not None and decisions[0].pad.passed is True


def test_armed_verification_mode_refuses_the_print_and_verifies_the_resident(
    print_attack: list[Frame],
    resident_visit: list[Frame],
    stages: Stages,
    gallery: InMemoryGallery,
    liveness: LivenessStage,
) -> None:
    armed = unit_config(matching={"require_claim": True})
    attack = run(print_attack, armed, stages, gallery, liveness, claim="resident")
    assert [d.type for d in attack] == [DecisionType.PRESENTATION_ATTACK]
    verified = run(resident_visit, armed, stages, gallery, liveness, claim="resident")
    assert [(d.type, d.reasons) for d in verified] == [(DecisionType.RECOGNIZED, ("claim_verified",))]


def test_nothing_of_the_visit_is_kept_after_the_pad_verdict(
    print_attack: list[Frame], stages: Stages, gallery: InMemoryGallery, liveness: LivenessStage
) -> None:
    """Right after the decision (the track still in view) the visit holds no sample and no PAD context."""
    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(
        unit_config(), stages, gallery=gallery, publisher=publisher, liveness=liveness
    )
    for frame in print_attack:
        if pipeline.process(frame):
            break
    assert [d.type for d in publisher.decisions] == [DecisionType.PRESENTATION_ATTACK]
    visits = list(pipeline._book.visits.values())
    assert visits and all(visit.decided and len(visit.samples) == 0 for visit in visits)


def test_health_after_pad_visits_still_fits_the_published_schema(
    print_attack: list[Frame],
    resident_visit: list[Frame],
    stages: Stages,
    gallery: InMemoryGallery,
    liveness: LivenessStage,
) -> None:
    """PAD adds a stage latency and a decision type to health: the report must still validate."""
    pipeline = Pipeline.from_stages(
        unit_config(), stages, gallery=gallery, publisher=RecordingPublisher(), liveness=liveness
    )
    both = [*resident_visit, *print_attack]
    for seq, frame in enumerate(both):  # one stream: stamped as a 15 fps camera would
        pipeline.process(Frame(image=frame.image, ts=seq / 15.0, seq=seq))
    pipeline.finish()
    health, problems = published_health(pipeline.health())
    assert problems == []
    assert "pad" in health["pipeline"]["stage_ms"]
    assert health["pipeline"]["decisions"].get("presentation_attack") == 1


@pytest.mark.slow
def test_a_real_unit_s_health_says_which_file_every_model_runs_and_why_untrimmed(
    tmp_path: Path,
    print_attack: list[Frame],
    resident_visit: list[Frame],
    stages: Stages,
    analyzer: FaceAnalyzer,
    liveness: LivenessStage,
) -> None:
    """The periodic health of a unit as `device run` builds it (encrypted gallery, capture thread, PAD on,
    every decision type seen) fits the 2 KiB message whole: before, the model reports were cut from it
    (``health_trimmed``), so health never said why a model ran its float or int8 file."""
    unit = init_unit(tmp_path)
    unit.store().enrol(
        EnrolRequest("Resident", embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"), "FORM-1", "t", "v1")
    )
    clip = tmp_path / "visits.avi"
    visits = [*resident_visit, *print_attack, *resident_visit[:40]]
    write_mjpeg(clip, (frame.image for frame in visits), 15.0, (640, 480))
    entrance_clip(tmp_path / "stranger.avi", analyzer, [("visitor", "biden.jpg")])
    publisher = RecordingPublisher()
    pipeline = Pipeline.from_stages(
        unit.config,
        stages,
        gallery=LiveGallery.from_config(unit.config),
        publisher=publisher,
        liveness=liveness,
    )
    for path in (clip, tmp_path / "stranger.avi"):
        runner = Runner(pipeline, CaptureThread(FileSource(path)), publisher, stop_event=threading.Event())
        assert runner.run() == 0
    assert {d.type for d in publisher.decisions} == {
        DecisionType.RECOGNIZED,
        DecisionType.PRESENTATION_ATTACK,
        DecisionType.UNKNOWN,
    }
    health, problems = published_health(runner.health())
    assert problems == [] and "health_trimmed" not in health["alarms"]
    models = health["pipeline"]["models"]
    assert set(models) == {"detector", "embedder", "minifasnet_v2", "minifasnet_v1se", "face_landmark"}
    for name, (variant, basis, int8_speedup) in models.items():
        assert variant in ("float", "int8"), name
        assert basis in ("config", "faster", "default", "previous", "only_file"), name  # why, in a word
        assert basis in ("only_file", "config") or int8_speedup > 0, name  # the measurement behind it
    assert set(health["pipeline"]["accelerator"]) == set(models)
    assert health["pipeline"]["gallery"]["gallery_subjects"] == 1
