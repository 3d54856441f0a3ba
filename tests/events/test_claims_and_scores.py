"""Issue 13, findings 3 and 4: claims expire and are used once; events say less about strangers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher
from device.events.payloads import PayloadError, Topics, build_event, parse_command
from device.identity.decide import ClaimSlot
from device.types import Decision, DecisionType
from tests.events.test_mqtt_publisher import Listener, claim_payload, unit_config, wait_for

TOPICS = Topics("entrance", "unit-a")


def test_a_claim_without_times_or_request_id_is_refused() -> None:
    bare = json.dumps({"command": "claim", "subject_id": "s-1"}).encode()
    with pytest.raises(PayloadError):
        parse_command(TOPICS, TOPICS.cmd("claim"), bare)


@pytest.mark.parametrize(
    ("issued_offset", "ttl_s", "why"),
    [(-120.0, 60.0, "stale claim"), (3600.0, 60.0, "future"), (0.0, 3600.0, "lifetime")],
)
def test_an_expired_future_or_long_lived_claim_is_refused(
    issued_offset: float, ttl_s: float, why: str
) -> None:
    now = time.time()
    payload = claim_payload("s-1", "r-1", unit=TOPICS.unit, issued=now + issued_offset, ttl_s=ttl_s)
    with pytest.raises(PayloadError, match=why):
        parse_command(TOPICS, TOPICS.cmd("claim"), payload, now=now)
    fresh = parse_command(
        TOPICS, TOPICS.cmd("claim"), claim_payload("s-1", "r-2", unit=TOPICS.unit, issued=now), now=now
    )
    assert fresh.subject_id == "s-1" and fresh.request_id == "r-2"


def test_a_claim_queued_while_the_unit_was_offline_does_not_apply_on_reconnect(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-stale-claim"
    config = unit_config(mosquitto_broker, tmp_path, unit, session_expiry_s=600)
    claims = ClaimSlot(window_s=60)
    # The unit connects once so the broker keeps its session (and queues its commands), then goes away.
    first = MqttPublisher(config, commands=command_table(on_claim=claims.set)).start()
    assert first.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
    first.close()
    commander = Listener(mosquitto_broker, [f"entrance/{unit}/health"])
    try:
        commander.publish(f"entrance/{unit}/cmd/claim", claim_payload("s-stale", "r-1", unit=unit, ttl_s=1.0))
        time.sleep(1.5)  # the claim expires while queued
        second = MqttPublisher(config, commands=command_table(on_claim=claims.set)).start()
        try:
            assert wait_for(lambda: second.health_snapshot()["commands"]["rejected"] >= 1)
            # A fresh claim, then the same one again (replayed by whoever could publish it): used once.
            commander.publish(f"entrance/{unit}/cmd/claim", claim_payload("s-fresh", "r-2", unit=unit))
            assert wait_for(lambda: claims.peek() == "s-fresh")
            claims.clear()
            commander.publish(f"entrance/{unit}/cmd/claim", claim_payload("s-fresh", "r-2", unit=unit))
            assert wait_for(lambda: second.health_snapshot()["commands"]["rejected"] >= 2)
            counts = second.health_snapshot()["commands"]
        finally:
            second.close()
    finally:
        commander.close()
    assert claims.peek() is None
    assert counts == {"accepted": 1, "rejected": 2, "rejected_unlogged": 0}


def decision(kind: DecisionType, reasons: tuple[str, ...]) -> Decision:
    subject = "s-1" if kind is DecisionType.RECOGNIZED else None
    return Decision(kind, subject, 0.61, 0.07, 5, reasons, 1)


def event_for(
    kind: DecisionType, reasons: tuple[str, ...], *, unknown_scores: bool = False
) -> dict[str, Any]:
    return build_event(
        decision(kind, reasons),
        seq=1,
        unit="unit-a",
        models={},
        gallery_version=None,
        unknown_scores=unknown_scores,
    )


def test_unknown_visits_carry_no_similarity_or_margin_unless_tuning_asks() -> None:
    recognised = event_for(DecisionType.RECOGNIZED, ("above_threshold",))
    assert (recognised["similarity"], recognised["margin"]) == (0.61, 0.07)
    unknown = event_for(DecisionType.UNKNOWN, ("below_threshold",))
    assert (unknown["similarity"], unknown["margin"]) == (None, None)
    tuned = event_for(DecisionType.UNKNOWN, ("below_threshold",), unknown_scores=True)
    assert (tuned["similarity"], tuned["margin"]) == (0.61, 0.07)


def test_a_claim_that_did_not_match_never_reports_the_similarity_to_the_claimed_resident() -> None:
    for tuning in (False, True):
        event = event_for(DecisionType.UNKNOWN, ("claim_not_matched",), unknown_scores=tuning)
        assert (event["similarity"], event["margin"]) == (None, None)
