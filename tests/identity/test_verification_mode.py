"""Verification mode on the real pipeline: a claim narrows the next decision to one subject (1:1), and
armed mode (``matching.require_claim``) matches nobody without a claim. Real models, the real encrypted
gallery (Obama and Biden enrolled from their photos), a visit of Obama walking in (from a third photo)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gallery_helpers import Unit, init_unit

from device.config import UnitConfig
from device.evaluation.fixtures import load_rgb
from device.identity.decide import ClaimSlot
from device.identity.gallery_store import EnrolRequest
from device.identity.live_gallery import LiveGallery
from device.lab.democlip import Walk, hallway, iter_script_frames, largest_face
from device.runtime.pipeline import Pipeline
from device.types import Decision, DecisionType, Frame, RgbImage
from device.vision.faces import FaceAnalyzer, Stages, load_stages


class Collect:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def publish_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def publish_health(self, health: Mapping[str, Any]) -> None:
        pass

    def io_alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


Setup = tuple[Unit, Stages, dict[str, str], list[RgbImage]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, face_images: dict[str, Path]) -> Setup:
    unit = init_unit(tmp_path_factory.mktemp("verification"))
    stages = load_stages(unit.config)
    analyzer = FaceAnalyzer(stages.detector, stages.embedder, stages.aligner)
    store = unit.store()
    ids = {}
    for name, photos in {"obama": ("obama.jpg", "obama2.jpg"), "biden": ("biden.jpg",)}.items():
        vectors = np.stack([analyzer.analyze(load_rgb(photo))[0].embedding for photo in photos])
        ids[name] = store.enrol(EnrolRequest(name, vectors, "F-1", "tester", "v1")).subject_id
    visitor = load_rgb("obama3.jpg")
    walk = Walk("obama", visitor, frames=30, start_face_px=110.0, end_face_px=150.0)
    face = largest_face(stages.detector.detect, visitor, "obama")
    frames = list(iter_script_frames(hallway(640, 480), [(walk, face)], [], empty_frames=12))
    return unit, stages, ids, frames


def watch(
    unit: Unit, stages: Stages, frames: list[RgbImage], *, claim: str | None = None, armed: bool = False
) -> tuple[list[Decision], Pipeline]:
    config: UnitConfig = unit.config
    if armed:
        config = config.model_copy(
            update={"matching": config.matching.model_copy(update={"require_claim": True})}
        )
    published = Collect()
    pipeline = Pipeline.from_stages(
        config,
        stages,
        gallery=LiveGallery.from_config(config),
        publisher=published,
        claims=ClaimSlot(config.matching.claim_window_s),
    )
    if claim is not None:
        pipeline.claim(claim)
    for seq, image in enumerate(frames):
        pipeline.process(Frame(image, seq / 15.0, seq))
    pipeline.finish()
    return published.decisions, pipeline


@pytest.mark.slow
def test_without_a_claim_the_visitor_is_identified_one_to_many(setup) -> None:  # type: ignore[no-untyped-def]
    unit, stages, ids, frames = setup
    (decision,), _ = watch(unit, stages, frames)
    assert decision.type is DecisionType.RECOGNIZED and decision.subject_id == ids["obama"]
    assert decision.reasons == ("above_threshold",)


def test_a_claim_for_someone_else_is_not_verified(setup) -> None:  # type: ignore[no-untyped-def]
    unit, stages, ids, frames = setup
    (decision,), pipeline = watch(unit, stages, frames, claim=ids["biden"])
    assert decision.type is DecisionType.UNKNOWN and decision.subject_id is None
    assert decision.reasons == ("claim_not_matched",)
    assert pipeline.claims.peek() is None  # the claim was used up by this decision


def test_a_claim_for_the_visitor_is_verified_one_to_one(setup) -> None:  # type: ignore[no-untyped-def]
    unit, stages, ids, frames = setup
    (decision,), _ = watch(unit, stages, frames, claim=ids["obama"])
    assert decision.type is DecisionType.RECOGNIZED and decision.subject_id == ids["obama"]
    assert decision.reasons == ("claim_verified",)


def test_armed_mode_looks_at_nobody_without_a_claim(setup) -> None:  # type: ignore[no-untyped-def]
    unit, stages, _, frames = setup
    decisions, pipeline = watch(unit, stages, frames, armed=True)
    assert decisions == []
    assert pipeline.detector_runs == 0  # not even detected: nothing about the visitor was computed


def test_armed_mode_verifies_a_claimed_visitor(setup) -> None:  # type: ignore[no-untyped-def]
    unit, stages, ids, frames = setup
    (decision,), _ = watch(unit, stages, frames, claim=ids["obama"], armed=True)
    assert decision.type is DecisionType.RECOGNIZED and decision.reasons == ("claim_verified",)
