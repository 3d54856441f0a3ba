"""The enrolment gate without models: a real photo with a hand-labelled face, degraded copies of it,
and embeddings built so that "same person" and "another person" are known."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from gallery_helpers import init_unit, run_device

from device.commands.enroll import judge_camera_frames
from device.config import MatchingSection, QualitySection, UnitConfig
from device.identity.enrol import (
    AlreadyEnrolledError,
    EnrolmentError,
    Rejection,
    Verdict,
    check_same_person,
    choose_templates,
    judge_picture,
    plan_enrolment,
)
from device.progress import ProgressBar, progress_line
from device.types import Box, Detection, RgbImage, Vector
from device.vision.capture.file import FileSource

# obama.jpg (910x1137), labelled by hand (same labels as test_quality): box and BlazeFace keypoints.
OBAMA_BOX = Box(370, 130, 620, 390)
OBAMA_KEYPOINTS = np.array(
    [[440, 215], [545, 215], [492, 275], [495, 325], [355, 245], [625, 245]], np.float32
)


@dataclass(frozen=True)
class Face:
    detection: Detection
    embedding: Vector


def unit_vector(seed: int, near: Vector | None = None, spread: float = 0.08) -> Vector:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=128) if near is None else near + spread * rng.normal(size=128) / np.sqrt(128)
    vector: Vector = (base / np.linalg.norm(base)).astype(np.float32)
    return vector


PERSON_A = unit_vector(1)
PERSON_B = unit_vector(2)


def obama_face(scale: float = 1.0, shift: tuple[float, float] = (0, 0), embedding: Vector = PERSON_A) -> Face:
    dx, dy = shift
    box = Box(
        OBAMA_BOX.x0 * scale + dx,
        OBAMA_BOX.y0 * scale + dy,
        OBAMA_BOX.x1 * scale + dx,
        OBAMA_BOX.y1 * scale + dy,
    )
    keypoints = (OBAMA_KEYPOINTS * scale + np.array([dx, dy], np.float32)).astype(np.float32)
    return Face(Detection(box, 0.95, keypoints), embedding)


@pytest.fixture
def obama(load_face) -> RgbImage:  # type: ignore[no-untyped-def]
    image: RgbImage = load_face("obama.jpg")
    return image


def test_a_clear_single_face_is_accepted_with_its_embedding(obama: RgbImage) -> None:
    verdict = judge_picture("obama.jpg", obama, [obama_face()], QualitySection())
    assert verdict.accepted, verdict.message
    assert verdict.embedding is not None and np.array_equal(verdict.embedding, PERSON_A)
    assert verdict.quality > 0
    assert verdict.message.startswith("accepted")


def test_no_face_is_rejected_as_no_face(obama: RgbImage) -> None:
    verdict = judge_picture("empty.jpg", obama, [], QualitySection())
    assert verdict.reasons == (Rejection.NO_FACE,)
    assert verdict.embedding is None
    assert "no face" in verdict.message


def test_a_second_face_of_usable_size_makes_the_picture_ambiguous(obama: RgbImage) -> None:
    second = obama_face(scale=0.6, shift=(0, 500), embedding=PERSON_B)
    verdict = judge_picture("two.jpg", obama, [obama_face(), second], QualitySection())
    assert verdict.reasons == (Rejection.SEVERAL_FACES,)
    assert "several faces (2)" in verdict.message
    assert verdict.embedding is None


def test_a_tiny_background_face_does_not_block_the_enrolment(obama: RgbImage) -> None:
    tiny = obama_face(scale=0.12, shift=(20, 900), embedding=PERSON_B)  # 30 px: neither usable nor close
    verdict = judge_picture("crowd.jpg", obama, [tiny, obama_face()], QualitySection())
    assert verdict.accepted, verdict.message
    assert verdict.embedding is not None and np.array_equal(verdict.embedding, PERSON_A)


def test_a_small_face_is_rejected_with_its_size_and_the_limit(obama: RgbImage) -> None:
    small = cv2.resize(obama, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    verdict = judge_picture("far.jpg", small, [obama_face(scale=0.2)], QualitySection())
    assert Rejection.TOO_SMALL in verdict.reasons
    assert "face too small (50 px, need 60)" in verdict.message


def test_a_blurred_face_is_rejected_as_blurred(obama: RgbImage) -> None:
    blurred = cv2.GaussianBlur(obama, (0, 0), 6)
    verdict = judge_picture("shaky.jpg", blurred, [obama_face()], QualitySection())
    assert verdict.reasons == (Rejection.BLURRED,)
    assert "face blurred (sharpness" in verdict.message and "need 40" in verdict.message


def test_a_face_turned_away_is_rejected_with_its_yaw(obama: RgbImage) -> None:
    face = obama_face()
    turned = face.detection.keypoints.copy()
    turned[2, 0] = 600.0  # nose tip close to the left ear point: head turned far to one side
    detection = Detection(face.detection.box, face.detection.score, turned)
    verdict = judge_picture("profile.jpg", obama, [Face(detection, PERSON_A)], QualitySection())
    assert verdict.reasons == (Rejection.TURNED_AWAY,)
    assert "face turned away (yaw" in verdict.message and "at most 35" in verdict.message


def accepted(source: str, embedding: Vector, quality: float = 0.5) -> Verdict:
    return Verdict(source, (), "accepted", quality=quality, embedding=embedding)


def test_a_picture_of_another_person_among_several_is_rejected() -> None:
    verdicts = [accepted(f"a{i}.jpg", unit_vector(10 + i, near=PERSON_A)) for i in range(3)]
    verdicts.append(accepted("b.jpg", unit_vector(20, near=PERSON_B)))
    checked = check_same_person(verdicts, threshold=0.93)
    assert [v.accepted for v in checked] == [True, True, True, False]
    assert checked[3].reasons == (Rejection.OTHER_PERSON,)
    assert "does not look like the person" in checked[3].message


def test_two_usable_pictures_of_different_people_refuse_the_enrolment() -> None:
    verdicts = [accepted("a.jpg", PERSON_A), accepted("b.jpg", PERSON_B)]
    with pytest.raises(EnrolmentError, match=r"do not look like the same person"):
        check_same_person(verdicts, threshold=0.93)


def test_templates_are_the_best_pictures_by_quality_up_to_the_limit() -> None:
    vectors = [unit_vector(30 + i, near=PERSON_A) for i in range(4)]
    verdicts = [accepted(f"{i}.jpg", vectors[i], quality=q) for i, q in enumerate([0.2, 0.9, 0.5, 0.7])]
    verdicts.append(Verdict("bad.jpg", (Rejection.BLURRED,), "blurred"))
    templates = choose_templates(verdicts, max_templates=2)
    assert np.array_equal(templates, np.stack([vectors[1], vectors[3]]))


def test_nothing_usable_refuses_the_enrolment() -> None:
    with pytest.raises(EnrolmentError, match="no usable picture"):
        choose_templates([Verdict("x.jpg", (Rejection.NO_FACE,), "no face found")], max_templates=5)


def test_a_person_already_enrolled_is_refused_unless_forced() -> None:
    gallery = (np.stack([unit_vector(40, near=PERSON_A), PERSON_B]), ["s-alice", "s-bob"])
    verdicts = [accepted("a1.jpg", unit_vector(41, near=PERSON_A)), accepted("a2.jpg", PERSON_A)]
    with pytest.raises(AlreadyEnrolledError, match="already matches enrolled subject s-alice") as caught:
        plan_enrolment(verdicts, gallery, matching=MatchingSection(), max_templates=5)
    assert caught.value.match.similarity >= MatchingSection().threshold

    plan = plan_enrolment(verdicts, gallery, matching=MatchingSection(), max_templates=5, force=True)
    assert plan.existing is not None and plan.existing.subject_id == "s-alice"
    assert plan.used == 2 and plan.rejected == 0


def test_a_new_person_is_planned_with_counts_of_used_and_rejected_pictures() -> None:
    gallery = (np.stack([PERSON_B]), ["s-bob"])
    verdicts = [accepted("a1.jpg", PERSON_A), Verdict("x.jpg", (Rejection.NO_FACE,), "no face found")]
    plan = plan_enrolment(verdicts, gallery, matching=MatchingSection(), max_templates=5)
    assert plan.existing is None
    assert (plan.used, plan.rejected) == (1, 1)
    assert np.array_equal(plan.templates, PERSON_A[None, :])


def test_the_progress_bar_counts_every_step() -> None:
    assert progress_line(3, 8, "c.jpg", width=8) == "[###-----] 3/8 c.jpg"
    assert progress_line(8, 8, "h.jpg", width=8) == "[########] 8/8 h.jpg"
    stream = io.StringIO()  # not a terminal: one line per step, for logs
    bar = ProgressBar(3, stream=stream)
    for name in ("a", "b", "c"):
        bar.step(name)
    bar.finish()
    assert stream.getvalue().splitlines()[-1].endswith("3/3 c")
    assert len(stream.getvalue().splitlines()) == 3


def test_camera_enrolment_keeps_spaced_good_frames_and_skips_bad_ones(
    tmp_path: Path, obama: RgbImage
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    blurred = cv2.GaussianBlur(obama, (0, 0), 6)
    for index in range(12):
        frame = blurred if index % 3 == 0 else obama
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame[:, :, ::-1])
    seen: list[int] = []

    def analyze(image: RgbImage) -> list[Face]:
        seen.append(len(seen))
        return [obama_face(embedding=unit_vector(100 + len(seen), near=PERSON_A))]

    verdicts = judge_camera_frames(FileSource(folder), analyze, UnitConfig(), wanted=3, frame_gap=2)
    assert [v.source for v in verdicts] == ["camera frame 1", "camera frame 4", "camera frame 7"]
    assert all(v.accepted for v in verdicts)

    with pytest.raises(EnrolmentError, match=r"only 0 of 2 good frames .*blurred x"):
        only_blurred = tmp_path / "blurred"
        only_blurred.mkdir()
        for index in range(3):
            cv2.imwrite(str(only_blurred / f"{index}.png"), blurred[:, :, ::-1])
        judge_camera_frames(FileSource(only_blurred), analyze, UnitConfig(), wanted=2, frame_gap=1)


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_enroll_refuses_without_a_consent_reference_and_stores_nothing(tmp_path: Path, face_images) -> None:  # type: ignore[no-untyped-def]
    unit = init_unit(tmp_path)
    result = run_device(
        "--config",
        str(unit.config_path),
        "enroll",
        "--name",
        "Barack",
        "--images",
        str(face_images["obama.jpg"]),
    )
    assert result.returncode == 1
    assert "needs --consent-ref" in result.stderr
    assert not unit.config.gallery.path.exists()
    blank = run_device(
        "--config",
        str(unit.config_path),
        "enroll",
        "--name",
        "Barack",
        "--consent-ref",
        "  ",
        "--images",
        str(face_images["obama.jpg"]),
    )
    assert blank.returncode == 1 and "needs --consent-ref" in blank.stderr
    assert not unit.config.gallery.path.exists()


def test_enroll_refuses_an_expiry_beyond_three_years_before_reading_pictures(tmp_path: Path) -> None:
    unit = init_unit(tmp_path)
    result = run_device(
        "--config", str(unit.config_path), "enroll", "--name", "Ann", "--consent-ref", "F-9",
        "--expires", "2099-01-01", "--images", str(tmp_path / "missing.jpg"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "more than 1095 days (3 years) away" in result.stderr
    assert not unit.config.gallery.path.exists()
