"""Deciding once per visit: recognized, unknown, insufficient_quality or presentation_attack, with reasons.

- ``decide`` turns a track's match (or the lack of usable samples) into a ``Decision``;
- ``ClaimSlot`` holds a pending claim (verification mode: a badge reader, keypad or door bell says who is
  expected; the next decision checks that one subject only, 1:1). In armed mode
  (``matching.require_claim``) nothing is matched without a live claim;
- ``VisitBook`` collects each track's best samples and says when a track is ready to be decided: as soon
  as it has enough good samples (fast door), else when it ends (with what it has).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Generic, TypeVar

from device.config import LivenessSection, MatchingSection, QualitySection
from device.types import Decision, DecisionType, Match, PadOutcome
from device.vision.quality import BestSamples


class Reason(StrEnum):
    ABOVE_THRESHOLD = "above_threshold"
    CLAIM_VERIFIED = "claim_verified"
    BELOW_THRESHOLD = "below_threshold"
    AMBIGUOUS = "ambiguous_margin"  # above threshold, but another subject is almost as close
    CLAIM_NOT_MATCHED = "claim_not_matched"
    CLAIM_NOT_ENROLLED = "claim_not_enrolled"
    GALLERY_EMPTY = "gallery_empty"
    NO_GALLERY = "no_gallery"  # the enrolled set could not be loaded
    NO_USABLE_SAMPLE = "no_usable_sample"
    # recognised, but PAD could not vouch for a live face: the door wants a verified claim as well
    SECOND_FACTOR_REQUIRED = "second_factor_required"


def decide(
    *,
    track_id: int,
    frames: int,
    samples: int,
    match: Match | None,
    config: MatchingSection,
    claim: str | None = None,
    quality_reasons: Iterable[str] = (),
    gallery_available: bool = True,
    pad: PadOutcome | None = None,
    liveness: LivenessSection | None = None,
) -> Decision:
    """One visit's decision. ``match`` is None when no sample passed the quality gate.

    An unknown decision never names a subject: the best candidate of a stranger is nobody's business.
    ``pad``: the visit's presentation-attack verdict; with ``liveness.mode == "enforce"`` a failed one
    makes the visit a ``presentation_attack`` (never ``recognized``), whatever the match said.
    """
    decision = decide_match(
        track_id=track_id,
        frames=frames,
        samples=samples,
        match=match,
        config=config,
        claim=claim,
        quality_reasons=quality_reasons,
        gallery_available=gallery_available,
    )
    if pad is None:
        return decision
    decision = replace(decision, pad=pad)
    mode = liveness.mode if liveness is not None else "enforce"
    if mode != "enforce" or decision.type is DecisionType.INSUFFICIENT_QUALITY:
        return decision
    if pad.passed is not False:
        return with_second_factor_if_uncertain(decision, pad, liveness)
    return presentation_attack(decision, pad, match, config, liveness)


def with_second_factor_if_uncertain(
    decision: Decision, pad: PadOutcome, liveness: LivenessSection | None
) -> Decision:
    """A recognised visit that PAD could not vouch for says so, unless a verified claim is its second factor
    already (``liveness.uncertain = "allow"`` turns this off)."""
    if (
        decision.type is not DecisionType.RECOGNIZED
        or pad.assurance != "uncertain"
        or (liveness is not None and liveness.uncertain == "allow")
        or Reason.CLAIM_VERIFIED.value in decision.reasons
    ):
        return decision
    return replace(decision, reasons=(*decision.reasons, Reason.SECOND_FACTOR_REQUIRED.value))


def presentation_attack(
    decision: Decision,
    pad: PadOutcome,
    match: Match | None,
    config: MatchingSection,
    liveness: LivenessSection | None,
) -> Decision:
    """The attack decision: names the impersonated resident only when the config allows it.

    By default the event does not even carry the similarity: a high one says "this is someone enrolled".
    """
    named = (
        liveness is not None
        and liveness.name_attacked_subject
        and match is not None
        and match.subject_id is not None
        and match.similarity >= config.threshold
    )
    reasons = tuple(f"pad_{cue}" for cue in pad.failed) or ("pad_failed",)
    return replace(
        decision,
        type=DecisionType.PRESENTATION_ATTACK,
        subject_id=match.subject_id if named and match is not None else None,
        similarity=match.similarity if named and match is not None else None,
        margin=match.margin if named and match is not None else None,
        reasons=reasons,
    )


def decide_match(
    *,
    track_id: int,
    frames: int,
    samples: int,
    match: Match | None,
    config: MatchingSection,
    claim: str | None = None,
    quality_reasons: Iterable[str] = (),
    gallery_available: bool = True,
) -> Decision:
    """The decision from the match alone (before presentation-attack detection)."""

    def make(kind: DecisionType, subject: str | None, reasons: tuple[str, ...]) -> Decision:
        similarity = None if match is None or match.subject_id is None else match.similarity
        margin = None if similarity is None or match is None else match.margin
        return Decision(kind, subject, similarity, margin, frames, reasons, track_id)

    if samples == 0 or match is None:
        return Decision(
            DecisionType.INSUFFICIENT_QUALITY,
            None,
            None,
            None,
            frames,
            (Reason.NO_USABLE_SAMPLE.value, *quality_reasons),
            track_id,
        )
    if not gallery_available:
        return make(DecisionType.UNKNOWN, None, (Reason.NO_GALLERY.value,))
    if match.subject_id is None:
        reason = Reason.CLAIM_NOT_ENROLLED if claim is not None else Reason.GALLERY_EMPTY
        return make(DecisionType.UNKNOWN, None, (reason.value,))
    if claim is not None:
        if match.subject_id == claim and match.similarity >= config.threshold:
            return make(DecisionType.RECOGNIZED, claim, (Reason.CLAIM_VERIFIED.value,))
        return make(DecisionType.UNKNOWN, None, (Reason.CLAIM_NOT_MATCHED.value,))
    if match.similarity < config.threshold:
        return make(DecisionType.UNKNOWN, None, (Reason.BELOW_THRESHOLD.value,))
    # No other subject enrolled (margin None): nobody to confuse the face with.
    if match.margin is not None and match.margin < config.min_margin:
        return make(DecisionType.UNKNOWN, None, (Reason.AMBIGUOUS.value,))
    return make(DecisionType.RECOGNIZED, match.subject_id, (Reason.ABOVE_THRESHOLD.value,))


class ClaimSlot:
    """A pending claim, valid for ``window_s`` seconds and consumed by the next decision (thread-safe)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._subject: str | None = None
        self._expires = 0.0

    def set(self, subject_id: str) -> None:
        subject = subject_id.strip()
        if not subject:
            raise ValueError("a claim needs a subject id")
        with self._lock:
            self._subject = subject
            self._expires = self._clock() + self._window_s

    def peek(self) -> str | None:
        with self._lock:
            return self._live()

    def take(self) -> str | None:
        with self._lock:
            subject = self._live()
            self._subject = None
            return subject

    def clear(self) -> None:
        with self._lock:
            self._subject = None

    def _live(self) -> str | None:
        if self._subject is not None and self._clock() > self._expires:
            self._subject = None
        return self._subject


S = TypeVar("S")


@dataclass
class Visit(Generic[S]):
    track_id: int
    samples: BestSamples[S]
    frames: int = 0
    decided: bool = False


@dataclass
class VisitBook(Generic[S]):
    """Per-track samples and the "decide now?" rule; forgets a track as soon as it ends."""

    quality: QualitySection
    matching: MatchingSection
    visits: dict[int, Visit[S]] = field(default_factory=dict)

    @property
    def samples_needed(self) -> int:
        return min(self.quality.best_k, self.matching.max_samples)

    def visit(self, track_id: int) -> Visit[S]:
        if track_id not in self.visits:
            self.visits[track_id] = Visit(track_id, BestSamples(self.quality.best_k))
        return self.visits[track_id]

    def observe(self, track_id: int, score: float, sample: S | None, reasons: Iterable[str] = ()) -> None:
        """One frame of a track: a sample that passed the quality gate, or the reasons it did not."""
        visit = self.visit(track_id)
        visit.frames += 1
        if visit.decided:
            return  # the decision is made; keep nothing more about this face
        if sample is None:
            visit.samples.reject(reasons)
        else:
            visit.samples.offer(score, sample)

    def ready(self, track_id: int) -> bool:
        visit = self.visits.get(track_id)
        return visit is not None and not visit.decided and len(visit.samples) >= self.samples_needed

    def take_samples(self, track_id: int) -> tuple[Visit[S], list[S]]:
        """Marks the visit decided and hands over its best samples (the visit keeps none of them)."""
        visit = self.visit(track_id)
        best = visit.samples.best()[: self.matching.max_samples]
        visit.decided = True
        visit.samples = BestSamples(
            self.quality.best_k, rejected=visit.samples.rejected, seen=visit.samples.seen
        )
        return visit, best

    def end(self, track_id: int) -> Visit[S] | None:
        return self.visits.pop(track_id, None)
