"""The command gate on its own: what a command message must pass before a handler runs, with no broker.

The same gate sits behind the unit's MQTT subscription (tests/events/test_signed_commands.py plays these
attacks over a real Mosquitto); here each refusal is pinned to its step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from command_support import commander_key, signed, trust_file

from device.events.command_gate import CommandGate, command_table
from device.events.payloads import PayloadError, Topics
from device.events.signing import CommandVerifier

TOPICS = Topics("entrance", "unit-gate")


def gate(tmp_path: Path, claimed: list[str], *, remembered: int = 16) -> CommandGate:
    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    return CommandGate(TOPICS, verifier, command_table(on_claim=claimed.append), remembered=remembered)


def test_a_trusted_fresh_claim_reaches_its_handler_once(tmp_path: Path) -> None:
    claimed: list[str] = []
    commands = gate(tmp_path, claimed)
    message = signed("claim", "resident-1")
    commands.handle(TOPICS.cmd("claim"), message, retained=False)
    with pytest.raises(PayloadError, match="already used"):
        commands.handle(TOPICS.cmd("claim"), message, retained=False)
    assert claimed == ["resident-1"]


def test_a_retained_command_is_refused_before_it_is_read(tmp_path: Path) -> None:
    claimed: list[str] = []
    with pytest.raises(PayloadError, match="retained"):
        gate(tmp_path, claimed).handle(TOPICS.cmd("claim"), signed("claim", "resident-1"), retained=True)
    assert claimed == []


def test_a_command_signed_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    claimed: list[str] = []
    forged = signed("claim", "resident-1", key=commander_key(seed=7))
    with pytest.raises(PayloadError):
        gate(tmp_path, claimed).handle(TOPICS.cmd("claim"), forged, retained=False)
    assert claimed == []


def test_a_command_the_unit_has_no_handler_for_is_refused(tmp_path: Path) -> None:
    claimed: list[str] = []
    with pytest.raises(PayloadError, match="does not take reload"):
        gate(tmp_path, claimed).handle(TOPICS.cmd("reload"), signed("reload"), retained=False)


def test_a_handler_refusal_is_the_commands_refusal(tmp_path: Path) -> None:
    def refuse(subject: str) -> None:
        raise ValueError(f"{subject} is not enrolled")

    verifier = CommandVerifier.from_config(trust_file(tmp_path))
    commands = CommandGate(TOPICS, verifier, command_table(on_claim=refuse))
    with pytest.raises(PayloadError, match="claim refused: stranger is not enrolled"):
        commands.handle(TOPICS.cmd("claim"), signed("claim", "stranger"), retained=False)
