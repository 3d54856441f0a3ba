"""Who is in a picture? Each face matched against the active gallery exactly as the unit decides a visit.

Used by ``device identify`` (an operator's check after enrolment or forget). A face is reported as the
subject's pseudonymous id when the unit would recognise it (threshold and margin from the config, see
``device.identity.decide``), else as ``unknown``; the similarity to the closest subject is reported either
way so an operator can see how near the threshold a face is. An unknown face is never given a subject id.

With presentation-attack detection (``[liveness] mode`` not off) every face also gets its ``liveness``
verdict; a still can only use the cues of one picture (texture, frame edges, spectrum). In enforce mode a
face that fails it is not recognised, exactly as the unit would decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from device.config import LivenessSection, MatchingSection, QualitySection
from device.identity.decide import decide
from device.identity.enrol import FaceLike
from device.identity.match import TemplateIndex
from device.types import Box, DecisionType, RgbImage
from device.vision.liveness import Liveness
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
    liveness: Liveness | None = None  # None when PAD is off

    def as_json(self) -> dict[str, object]:
        return {
            "box": [round(value, 1) for value in self.box],
            "subject_id": self.subject_id,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "margin": None if self.margin is None else round(self.margin, 4),
            "reasons": list(self.reasons),
            "quality_issues": list(self.quality_issues),
            **({} if self.liveness is None else {"liveness": self.liveness.as_json()}),
        }


def identify_faces(
    image: RgbImage,
    faces: Sequence[FaceLike],
    index: TemplateIndex,
    matching: MatchingSection,
    quality: QualitySection,
    *,
    liveness_of: Callable[[RgbImage, Box], Liveness] | None = None,
    liveness: LivenessSection | None = None,
) -> list[FaceIdentity]:
    """One entry per face, in the order given (the analyzer gives largest first).

    ``liveness_of``: the PAD stage's verdict on one face of a still (``LivenessStage.still``).
    """
    results = []
    for face in faces:
        match = index.match(face.embedding)
        verdict = None if liveness_of is None else liveness_of(image, face.detection.box)
        decision = decide(
            track_id=0,
            frames=1,
            samples=1,
            match=match,
            config=matching,
            pad=None if verdict is None else verdict.outcome(),
            liveness=liveness,
        )
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
                liveness=verdict,
            )
        )
    return results
