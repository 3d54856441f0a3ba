"""The command gate on its own: what a command message must pass before a handler runs, with no broker.

The same gate sits behind the unit's MQTT subscription (tests/events/test_signed_commands.py plays these
attacks over a real Mosquitto); here each refusal is pinned to its step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from command_support import commander_key, signed, trust_file

from device.events.command_gate import CommandGate, SubjectNotEnrolledError, UsedRequests, command_table
from device.events.payloads import PayloadError, Refusal, Topics
from device.events.signing import CommandVerifier

TOPICS = Topics("entrance", "unit-gate")


def gate(
    tmp_path: Path, claimed: list[str], *, topics: Topics = TOPICS, used: UsedRequests | None = None
) -> CommandGate:
    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    return CommandGate(topics, verifier, command_table(on_claim=claimed.append), used=used)


def test_a_trusted_fresh_claim_reaches_its_handler_once(tmp_path: Path) -> None:
    claimed: list[str] = []
    commands = gate(tmp_path, claimed)
    message = signed("claim", "resident-1", unit=TOPICS.unit)
    commands.handle(TOPICS.cmd("claim"), message, retained=False)
    with pytest.raises(PayloadError, match="already used"):
        commands.handle(TOPICS.cmd("claim"), message, retained=False)
    assert claimed == ["resident-1"]


def test_a_retained_command_is_refused_before_it_is_read(tmp_path: Path) -> None:
    claimed: list[str] = []
    with pytest.raises(PayloadError, match="retained"):
        gate(tmp_path, claimed).handle(
            TOPICS.cmd("claim"), signed("claim", "resident-1", unit=TOPICS.unit), retained=True
        )
    assert claimed == []


def test_a_command_signed_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    claimed: list[str] = []
    forged = signed("claim", "resident-1", unit=TOPICS.unit, key=commander_key(seed=7))
    with pytest.raises(PayloadError):
        gate(tmp_path, claimed).handle(TOPICS.cmd("claim"), forged, retained=False)
    assert claimed == []


def test_a_command_the_unit_has_no_handler_for_is_refused(tmp_path: Path) -> None:
    claimed: list[str] = []
    with pytest.raises(PayloadError, match="does not take reload"):
        gate(tmp_path, claimed).handle(
            TOPICS.cmd("reload"), signed("reload", unit=TOPICS.unit), retained=False
        )


def test_a_handler_refusal_is_the_commands_refusal(tmp_path: Path) -> None:
    def refuse(subject: str) -> None:
        raise ValueError(f"{subject} is not enrolled")

    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    commands = CommandGate(TOPICS, verifier, command_table(on_claim=refuse))
    with pytest.raises(PayloadError, match="claim refused: stranger is not enrolled"):
        commands.handle(TOPICS.cmd("claim"), signed("claim", "stranger", unit=TOPICS.unit), retained=False)


def test_a_claim_recorded_on_one_unit_is_refused_by_another(tmp_path: Path) -> None:
    """The signed unit id, not the topic: replayed on another unit's topic, it names the first unit."""
    claimed: list[str] = []
    recorded = signed("claim", "resident-1", unit=TOPICS.unit)
    other = Topics("entrance", "unit-next-door")
    with pytest.raises(PayloadError, match="is for unit 'unit-gate', not this one"):
        gate(tmp_path, claimed, topics=other).handle(other.cmd("claim"), recorded, retained=False)
    gate(tmp_path, claimed).handle(TOPICS.cmd("claim"), recorded, retained=False)  # the control
    assert claimed == ["resident-1"]


def test_a_claim_replayed_after_the_unit_restarts_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "state" / "commands-used.jsonl"
    claimed: list[str] = []
    recorded = signed("claim", "resident-1", unit=TOPICS.unit)
    gate(tmp_path, claimed, used=UsedRequests(record)).handle(TOPICS.cmd("claim"), recorded, retained=False)
    restarted = gate(tmp_path, claimed, used=UsedRequests(record))  # a new process reads the record
    with pytest.raises(PayloadError, match="already used"):
        restarted.handle(TOPICS.cmd("claim"), recorded, retained=False)
    assert claimed == ["resident-1"]
    assert record.stat().st_mode & 0o777 == 0o600


def test_the_record_keeps_each_request_only_until_its_command_expired(tmp_path: Path) -> None:
    record = tmp_path / "commands-used.jsonl"
    now = [1_000_000.0]
    used = UsedRequests(record, clock=lambda: now[0])
    used.mark("door/r-1", expires_at=now[0] + 30)
    assert "door/r-1" in UsedRequests(record, clock=lambda: now[0])
    now[0] += 30 + 60  # expired, and past the clock skew the unit allows: refused by its time anyway
    assert "door/r-1" not in UsedRequests(record, clock=lambda: now[0])


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    record = tmp_path / "commands-used.jsonl"
    used = UsedRequests(record)
    used.mark("door/r-1", expires_at=4_000_000_000.0)
    with record.open("a", encoding="utf-8") as torn:
        torn.write('{"request": "door/r-2", "expi')
    assert "door/r-1" in UsedRequests(record)


# --- the verdict the unit answers with (issue 26) ---------------------------------------------------


def enrolled_only(claimed: list[str]) -> Callable[[str], None]:
    """A gate whose claim handler knows one resident, as the running unit's does (runtime.service)."""

    def claim(subject: str) -> None:
        if subject != "resident-1":
            raise SubjectNotEnrolledError(f"{subject} is not enrolled")
        claimed.append(subject)

    return claim


def claim(subject: str = "resident-1", **options: Any) -> bytes:
    unit = options.pop("unit", TOPICS.unit)
    return signed("claim", subject, unit=unit, **options)


# Messages are made when the test runs, not at collection: a signed command lives 30 s.
REFUSALS: dict[Refusal, tuple[str, Callable[[], bytes], bool]] = {
    Refusal.MALFORMED: ("claim", lambda: b"{not json", False),
    Refusal.RETAINED: ("claim", claim, True),
    Refusal.WRONG_UNIT: ("claim", lambda: claim(unit="unit-next-door"), False),
    Refusal.EXPIRED: ("claim", lambda: claim(issued=time.time() - 120, ttl_s=60), False),
    Refusal.NOT_YET_VALID: ("claim", lambda: claim(issued=time.time() + 300), False),
    Refusal.UNTRUSTED: ("claim", lambda: claim(key=commander_key(seed=7)), False),
    Refusal.NOT_ENROLLED: ("claim", lambda: claim("stranger"), False),
    Refusal.UNSUPPORTED: ("health", lambda: signed("health", unit=TOPICS.unit), False),
}


@pytest.mark.parametrize("reason", list(REFUSALS), ids=str)
def test_every_refusal_is_a_verdict_with_its_reason(tmp_path: Path, reason: Refusal) -> None:
    name, make, retained = REFUSALS[reason]
    message = make()
    claimed: list[str] = []
    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    commands = CommandGate(TOPICS, verifier, command_table(on_claim=enrolled_only(claimed)))
    verdict = commands.decide(TOPICS.cmd(name), message, retained=retained)
    assert (verdict.applied, verdict.refusal) == (False, reason)
    assert claimed == []
    readable = json.loads(message) if message.startswith(b'{"') else {}
    assert verdict.request_id == readable.get("request_id")  # the answer names the request it refuses


def test_a_unit_whose_clock_is_not_set_answers_clock_not_synchronised(tmp_path: Path) -> None:
    claimed: list[str] = []
    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    commands = CommandGate(
        TOPICS, verifier, command_table(on_claim=enrolled_only(claimed)), clock_synchronised=lambda: False
    )
    verdict = commands.decide(TOPICS.cmd("claim"), claim(), retained=False)
    assert (verdict.applied, verdict.refusal) == (False, Refusal.CLOCK_UNSYNCHRONISED)
    assert claimed == []


def test_a_command_on_another_commands_topic_is_malformed(tmp_path: Path) -> None:
    commands = CommandGate(TOPICS, CommandVerifier.from_config(trust_file(tmp_path)), command_table())
    verdict = commands.decide(TOPICS.cmd("reload"), claim(request_id="r-x"), retained=False)
    assert (verdict.refusal, verdict.request_id, verdict.command) == (Refusal.MALFORMED, "r-x", "claim")


def test_a_replayed_command_is_refused_as_replayed_and_the_first_applied(tmp_path: Path) -> None:
    claimed: list[str] = []
    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    commands = CommandGate(TOPICS, verifier, command_table(on_claim=enrolled_only(claimed)))
    message = signed("claim", "resident-1", unit=TOPICS.unit, request_id="r-once")
    first = commands.decide(TOPICS.cmd("claim"), message, retained=False)
    again = commands.decide(TOPICS.cmd("claim"), message, retained=False)
    assert (first.applied, first.request_id, first.subject_id) == (True, "r-once", "resident-1")
    assert (again.refusal, again.request_id) == (Refusal.REPLAYED, "r-once")
    assert claimed == ["resident-1"]
