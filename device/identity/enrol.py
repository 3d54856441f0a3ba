"""Enrolment decisions: which pictures are good enough, do they show one person, is that person new?

The enrol command (``device enroll``) reads pictures (files or camera frames), runs them through the
unit's own face analyzer, and asks this module three questions before anything is stored:

1. Per picture, the quality gate (``device.vision.quality.assess``, the same gate the running unit uses) plus
   the enrolment-only rules: exactly one face of usable size (a second face that is large enough to be
   enrolled itself makes the picture ambiguous: whose consent is it?), sharp, facing the camera.
   Each rejection carries a reason code and a sentence an operator can act on.
2. Do the accepted pictures show the same person? Each embedding is compared with the medoid (the
   embedding closest to all others); one below the matching threshold is rejected as "another person".
   Two pictures that disagree cannot be told apart, so that refuses the enrolment.
3. Is the person already enrolled under another subject id? The new embeddings are matched against the
   active gallery exactly as the unit matches a visit; at or above the threshold the enrolment is refused
   (unless forced), because two subject ids for one person break forget and audit.

Pictures and embeddings of rejected pictures are dropped here; nothing of them is written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from device.config import MatchingSection, QualitySection
from device.errors import UserError
from device.identity.match import TemplateIndex
from device.types import Detection, Match, RgbImage, Vector
from device.vision.quality import QualityReason, QualityReport, assess

# A second face counts as "several faces" when it is at least this fraction of the main face's size,
# or large enough to pass the size gate on its own: either way it could be the person meant.
COMPETING_FACE_FRACTION = 0.5


class FaceLike(Protocol):
    """What enrolment needs from one analyzed face (``device.vision.faces.AnalyzedFace`` provides it)."""

    @property
    def detection(self) -> Detection: ...

    @property
    def embedding(self) -> Vector: ...


Analyze = Callable[[RgbImage], Sequence[FaceLike]]  # the analyzer's analyze(): faces in one picture


class Rejection(StrEnum):
    UNREADABLE = "unreadable"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    TURNED_AWAY = "turned_away"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    CUT_OFF = "cut_off"
    OTHER_PERSON = "other_person"


class EnrolmentError(UserError):
    """The enrolment cannot go ahead; the message says why and what to do, ``code`` says it briefly."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


class AlreadyEnrolledError(EnrolmentError):
    def __init__(self, match: Match) -> None:
        self.match = match
        super().__init__(
            f"this person already matches enrolled subject {match.subject_id} "
            f"(similarity {match.similarity:.3f}); forget that subject first, or use --force if these "
            "really are two different people",
            code="already_enrolled",
        )


@dataclass(frozen=True)
class Verdict:
    """One picture's outcome. ``embedding`` is set only for accepted pictures."""

    source: str
    reasons: tuple[Rejection, ...]
    message: str
    quality: float = 0.0  # the quality gate's score (higher is better), 0 when rejected
    embedding: Vector | None = None

    @property
    def accepted(self) -> bool:
        return not self.reasons


_QUALITY_TO_REJECTION = {
    QualityReason.TOO_SMALL: Rejection.TOO_SMALL,
    QualityReason.BLURRED: Rejection.BLURRED,
    QualityReason.TURNED_AWAY: Rejection.TURNED_AWAY,
    QualityReason.TOO_DARK: Rejection.TOO_DARK,
    QualityReason.TOO_BRIGHT: Rejection.TOO_BRIGHT,
    QualityReason.CUT_OFF: Rejection.CUT_OFF,
}


def face_size(detection: Detection) -> float:
    return min(detection.box.width, detection.box.height)


def competing_faces(faces: Sequence[FaceLike], quality: QualitySection) -> int:
    """How many faces besides the largest could be the person meant (tiny background faces do not)."""
    if len(faces) < 2:
        return 0
    sizes = sorted((face_size(face.detection) for face in faces), reverse=True)
    bar = min(quality.min_face_px, COMPETING_FACE_FRACTION * sizes[0])
    return sum(1 for size in sizes[1:] if size >= bar)


def explain_quality(report: QualityReport, quality: QualitySection) -> str:
    """One sentence per failed check, with the measured value and the limit."""
    parts = []
    for reason in report.reasons:
        if reason is QualityReason.TOO_SMALL:
            parts.append(f"face too small ({report.size_px:.0f} px, need {quality.min_face_px})")
        elif reason is QualityReason.BLURRED:
            parts.append(f"face blurred (sharpness {report.sharpness:.0f}, need {quality.min_sharpness:g})")
        elif reason is QualityReason.TURNED_AWAY:
            parts.append(
                f"face turned away (yaw {abs(report.yaw_deg):.0f} degrees, at most {quality.max_yaw_deg:g})"
            )
        elif reason is QualityReason.TOO_DARK:
            parts.append(
                f"face too dark (brightness {report.brightness:.0f}, need {quality.min_brightness:g})"
            )
        elif reason is QualityReason.TOO_BRIGHT:
            parts.append(
                f"face too bright (brightness {report.brightness:.0f}, at most {quality.max_brightness:g})"
            )
        elif reason is QualityReason.CUT_OFF:
            parts.append(f"face cut off by the picture edge ({report.outside_fraction:.0%} outside)")
    return "; ".join(parts)


def judge_picture(
    source: str, image: RgbImage, faces: Sequence[FaceLike], quality: QualitySection
) -> Verdict:
    """The enrolment gate for one picture, given the analyzer's faces (largest first or in any order)."""
    if not faces:
        return Verdict(source, (Rejection.NO_FACE,), "no face found")
    ordered = sorted(faces, key=lambda face: face_size(face.detection), reverse=True)
    others = competing_faces(ordered, quality)
    if others:
        return Verdict(
            source,
            (Rejection.SEVERAL_FACES,),
            f"several faces ({others + 1}); use a picture showing only the person to enrol",
        )
    main = ordered[0]
    report = assess(image, main.detection, quality)
    if not report.accepted:
        reasons = tuple(_QUALITY_TO_REJECTION[reason] for reason in report.reasons)
        return Verdict(source, reasons, explain_quality(report, quality))
    embedding = np.asarray(main.embedding, dtype=np.float32)
    return Verdict(
        source,
        (),
        f"accepted (face {report.size_px:.0f} px, sharpness {report.sharpness:.0f}, "
        f"yaw {report.yaw_deg:+.0f} degrees)",
        quality=report.score,
        embedding=embedding,
    )


def unreadable(source: str, message: str) -> Verdict:
    return Verdict(source, (Rejection.UNREADABLE,), message)


def check_same_person(verdicts: Sequence[Verdict], threshold: float) -> list[Verdict]:
    """Rejects accepted pictures that do not look like the others (see the module doc)."""
    accepted = [index for index, verdict in enumerate(verdicts) if verdict.accepted]
    if len(accepted) < 2:
        return list(verdicts)
    vectors = np.stack([_embedding(verdicts[index]) for index in accepted])
    similarity = vectors @ vectors.T
    if len(accepted) == 2:
        pair = float(similarity[0, 1])
        if pair < threshold:
            raise EnrolmentError(
                f"the two usable pictures ({verdicts[accepted[0]].source}, {verdicts[accepted[1]].source}) "
                f"do not look like the same person (similarity {pair:.3f} < threshold {threshold:.3f}); "
                "check them, or add more pictures of the person",
                code="pictures_disagree",
            )
        return list(verdicts)
    # Mean similarity to the others (the diagonal, 1.0 for itself, is left out).
    mean_to_others = (similarity.sum(axis=1) - np.diag(similarity)) / (len(accepted) - 1)
    medoid = int(np.argmax(mean_to_others))
    result = list(verdicts)
    for row, index in enumerate(accepted):
        to_medoid = float(similarity[row, medoid])
        if row != medoid and to_medoid < threshold:
            result[index] = Verdict(
                verdicts[index].source,
                (Rejection.OTHER_PERSON,),
                f"does not look like the person in the other pictures (similarity {to_medoid:.3f} "
                f"< threshold {threshold:.3f})",
            )
    return result


def _embedding(verdict: Verdict) -> Vector:
    if verdict.embedding is None:
        raise ValueError(f"{verdict.source} has no embedding")
    return verdict.embedding


def choose_templates(verdicts: Sequence[Verdict], max_templates: int) -> NDArray[np.float32]:
    """The best ``max_templates`` accepted embeddings by quality score, best first."""
    accepted = sorted((v for v in verdicts if v.accepted), key=lambda v: v.quality, reverse=True)
    if not accepted:
        raise EnrolmentError(
            "no usable picture: every picture was rejected (reasons above)", code="no_usable_picture"
        )
    return np.stack([_embedding(v) for v in accepted[:max_templates]]).astype(np.float32)


def find_existing_match(
    templates: NDArray[np.float32], gallery: tuple[NDArray[np.float32], list[str]], matching: MatchingSection
) -> Match | None:
    """The enrolled subject this person already matches (as the unit would decide it), if any."""
    rows, subject_ids = gallery
    if not subject_ids:
        return None
    match = TemplateIndex(rows, subject_ids).match(templates)
    if match.subject_id is None or match.similarity < matching.threshold:
        return None
    return match


@dataclass(frozen=True)
class EnrolmentPlan:
    verdicts: list[Verdict]
    templates: NDArray[np.float32]
    existing: Match | None  # set only when forced past a duplicate

    @property
    def used(self) -> int:
        return sum(1 for verdict in self.verdicts if verdict.accepted)

    @property
    def rejected(self) -> int:
        return len(self.verdicts) - self.used


def plan_enrolment(
    verdicts: Sequence[Verdict],
    gallery: tuple[NDArray[np.float32], list[str]],
    *,
    matching: MatchingSection,
    max_templates: int,
    force: bool = False,
) -> EnrolmentPlan:
    """Steps 2 and 3 of the module doc over the per-picture verdicts; raises ``EnrolmentError``."""
    checked = check_same_person(verdicts, matching.threshold)
    templates = choose_templates(checked, max_templates)
    existing = find_existing_match(templates, gallery, matching)
    if existing is not None and not force:
        raise AlreadyEnrolledError(existing)
    return EnrolmentPlan(checked, templates, existing)
