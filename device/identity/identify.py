"""Who is in a picture? Each face matched against the active gallery exactly as the unit decides a visit.

Used by ``device identify`` (an operator's check after enrolment or forget). A face is reported as the
subject's pseudonymous id when the unit would recognise it (threshold and margin from the config, see
``device.identity.decide``), else as ``unknown``; the similarity to the closest subject is reported either
way so an operator can see how near the threshold a face is. An unknown face is never given a subject id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from device.config import MatchingSection, QualitySection
from device.identity.decide import decide
from device.identity.enrol import FaceLike
from device.identity.match import TemplateIndex
from device.types import DecisionType, RgbImage
from device.vision.quality import assess

UNKNOWN = "unknown"


@dataclass(frozen=True)
class FaceIdentity:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the picture
    subject_id: str  # a subject id or "unknown"
    similarity: float | None  # to the closest enrolled subject; None when nothing is enrolled
    margin: float | None
    reasons: tuple[str, ...]  # the decision's reason codes
    quality_issues: tuple[str, ...]  # quality gate failures (the unit would not use this face)

    def as_json(self) -> dict[str, object]:
        return {
            "box": [round(value, 1) for value in self.box],
            "subject_id": self.subject_id,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "margin": None if self.margin is None else round(self.margin, 4),
            "reasons": list(self.reasons),
            "quality_issues": list(self.quality_issues),
        }


def identify_faces(
    image: RgbImage,
    faces: Sequence[FaceLike],
    index: TemplateIndex,
    matching: MatchingSection,
    quality: QualitySection,
) -> list[FaceIdentity]:
    """One entry per face, in the order given (the analyzer gives largest first)."""
    results = []
    for face in faces:
        match = index.match(face.embedding)
        decision = decide(track_id=0, frames=1, samples=1, match=match, config=matching)
        recognised = decision.type is DecisionType.RECOGNIZED and decision.subject_id is not None
        similarity = None if match.subject_id is None else match.similarity
        margin = None if match.subject_id is None else match.margin
        box = face.detection.box
        results.append(
            FaceIdentity(
                box=(box.x0, box.y0, box.x1, box.y1),
                subject_id=decision.subject_id if recognised and decision.subject_id else UNKNOWN,
                similarity=similarity,
                margin=margin,
                reasons=decision.reasons,
                quality_issues=tuple(
                    reason.value for reason in assess(image, face.detection, quality).reasons
                ),
            )
        )
    return results
