"""Decisions and reason codes, claims (verification mode), and the one-decision-per-visit bookkeeping."""

from __future__ import annotations

import numpy as np

from device.config import LivenessSection, MatchingSection, QualitySection
from device.identity.decide import ClaimSlot, Reason, VisitBook, decide
from device.types import Decision, DecisionType, Match, PadOutcome

CONFIG = MatchingSection(threshold=0.9, min_margin=0.02)


def decision_for(match: Match | None, samples: int = 3, claim: str | None = None):  # type: ignore[no-untyped-def]
    return decide(track_id=7, frames=12, samples=samples, match=match, config=CONFIG, claim=claim)


def test_a_close_unambiguous_match_is_recognized() -> None:
    decision = decision_for(Match("alice", 0.95, 0.1))
    assert decision.type is DecisionType.RECOGNIZED
    assert decision.subject_id == "alice"
    assert decision.reasons == (Reason.ABOVE_THRESHOLD,)
    assert (decision.frames, decision.track_id) == (12, 7)


def test_below_threshold_is_unknown_and_names_nobody() -> None:
    decision = decision_for(Match("alice", 0.85, 0.1))
    assert decision.type is DecisionType.UNKNOWN
    assert decision.subject_id is None
    assert decision.reasons == (Reason.BELOW_THRESHOLD,)


def test_a_face_close_to_two_subjects_is_ambiguous() -> None:
    decision = decision_for(Match("alice", 0.95, 0.005))
    assert (decision.type, decision.reasons) == (DecisionType.UNKNOWN, (Reason.AMBIGUOUS,))


def test_a_single_enrolled_subject_has_no_margin_and_is_not_ambiguous() -> None:
    """Issue 15: with one subject there is nobody to be confused with: margin null, decided on threshold."""
    from device.events.payloads import build_event
    from device.identity.match import match_embedding

    alice = np.zeros(128, np.float32)
    alice[0] = 1.0
    match = match_embedding(alice[None, :], ["alice"], alice)
    decision = decision_for(match)
    assert (decision.type, decision.subject_id, decision.margin) == (DecisionType.RECOGNIZED, "alice", None)
    event = build_event(decision, seq=1, unit="u1", models={}, gallery_version=None)  # schema-checked
    assert event["margin"] is None and event["subject"] == "alice"
    assert decision_for(Match("alice", 0.85, None)).reasons == (Reason.BELOW_THRESHOLD,)


def test_no_usable_sample_is_insufficient_quality_with_the_quality_reasons() -> None:
    decision = decide(
        track_id=1, frames=9, samples=0, match=None, config=CONFIG, quality_reasons=("blurred", "too_dark")
    )
    assert decision.type is DecisionType.INSUFFICIENT_QUALITY
    assert decision.reasons == (Reason.NO_USABLE_SAMPLE, "blurred", "too_dark")


def test_empty_gallery_and_missing_gallery_are_unknown_with_their_reason() -> None:
    assert decision_for(Match(None, -1.0, 0.0)).reasons == (Reason.GALLERY_EMPTY,)
    missing = decide(
        track_id=1, frames=3, samples=2, match=Match(None, -1.0, 0.0), config=CONFIG, gallery_available=False
    )
    assert missing.reasons == (Reason.NO_GALLERY,)


def test_a_claim_is_verified_one_to_one() -> None:
    verified = decision_for(Match("bob", 0.93, 0.001), claim="bob")  # margin does not matter in 1:1
    assert (verified.type, verified.subject_id) == (DecisionType.RECOGNIZED, "bob")
    assert verified.reasons == (Reason.CLAIM_VERIFIED,)
    refused = decision_for(Match("bob", 0.7, -0.2), claim="bob")
    assert (refused.type, refused.subject_id, refused.reasons) == (
        DecisionType.UNKNOWN,
        None,
        (Reason.CLAIM_NOT_MATCHED,),
    )
    assert decision_for(Match(None, -1.0, 0.0), claim="ghost").reasons == (Reason.CLAIM_NOT_ENROLLED,)


def test_a_claim_expires_and_is_consumed_once() -> None:
    now = [100.0]
    slot = ClaimSlot(window_s=15.0, clock=lambda: now[0])
    slot.set("alice")
    assert slot.peek() == "alice"
    assert slot.take() == "alice"
    assert slot.take() is None
    slot.set("bob")
    now[0] += 16.0
    assert slot.peek() is None


def test_a_visit_is_ready_once_it_has_enough_good_samples_and_is_decided_only_once() -> None:
    book: VisitBook[str] = VisitBook(QualitySection(best_k=3), MatchingSection(max_samples=2))
    book.observe(1, 0.0, None, ["blurred"])
    book.observe(1, 0.4, "s1")
    assert not book.ready(1)
    book.observe(1, 0.9, "s2")
    assert book.ready(1)
    _, samples = book.take_samples(1)
    assert samples == ["s2", "s1"]
    book.observe(1, 0.99, "s3")  # after the decision nothing more is kept
    assert not book.ready(1)
    assert len(book.visit(1).samples) == 0
    ended = book.end(1)
    assert ended is not None and ended.decided and ended.frames == 4


def pad(assurance: str) -> PadOutcome:
    passed = {"pass": True, "uncertain": True, "attack": False}[assurance]
    return PadOutcome(passed, 0.9 if passed else 0.1, {}, () if passed else ("texture",), assurance)


def decided_with_pad(assurance: str, *, claim: str | None = None, **liveness: str) -> Decision:
    return decide(
        track_id=7, frames=12, samples=3, match=Match("alice", 0.95, 0.1), config=CONFIG, claim=claim,
        pad=pad(assurance), liveness=LivenessSection.model_validate(liveness),
    )  # fmt: skip


def test_a_resident_pad_could_not_vouch_for_needs_a_second_factor() -> None:
    uncertain = decided_with_pad("uncertain")
    assert (uncertain.type, uncertain.subject_id) == (DecisionType.RECOGNIZED, "alice")
    assert Reason.SECOND_FACTOR_REQUIRED in uncertain.reasons
    assert Reason.SECOND_FACTOR_REQUIRED not in decided_with_pad("pass").reasons


def test_a_verified_claim_is_the_second_factor_already() -> None:
    claimed = decided_with_pad("uncertain", claim="alice")
    assert claimed.reasons == (Reason.CLAIM_VERIFIED,)


def test_uncertain_may_be_allowed_and_report_mode_changes_no_decision() -> None:
    assert Reason.SECOND_FACTOR_REQUIRED not in decided_with_pad("uncertain", uncertain="allow").reasons
    assert Reason.SECOND_FACTOR_REQUIRED not in decided_with_pad("uncertain", mode="report").reasons


def test_an_attack_is_never_recognized_and_needs_no_second_factor() -> None:
    attack = decided_with_pad("attack")
    assert (attack.type, attack.subject_id) == (DecisionType.PRESENTATION_ATTACK, None)
    assert Reason.SECOND_FACTOR_REQUIRED not in attack.reasons
