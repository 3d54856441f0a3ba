"""A signed claim reaches the running unit's claim slot only for a subject enrolled on it; any other is
refused ``not_enrolled`` (issue 26), so the door hears it at once instead of after a visit that cannot
match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from command_support import signed, trust_file

from device.events.command_gate import CommandGate, command_table
from device.events.payloads import Refusal, Topics
from device.events.signing import CommandVerifier
from device.identity.decide import ClaimSlot
from device.identity.match import InMemoryGallery
from device.runtime.service import enrolled_claims

TOPICS = Topics("entrance", "unit-claims")


def test_a_claim_for_an_enrolled_subject_applies_and_any_other_is_refused_not_enrolled(
    tmp_path: Path,
) -> None:
    gallery = InMemoryGallery()
    gallery.enrol("resident-1", np.ones((1, 128), np.float32))
    slot = ClaimSlot(window_s=60)
    gate = CommandGate(
        TOPICS,
        CommandVerifier.from_config(trust_file(tmp_path)),
        command_table(on_claim=enrolled_claims(slot, gallery)),
    )
    stranger = gate.decide(TOPICS.cmd("claim"), signed("claim", "stranger", unit=TOPICS.unit), retained=False)
    assert (stranger.refusal, stranger.subject_id) == (Refusal.NOT_ENROLLED, "stranger")
    assert slot.peek() is None
    resident = gate.decide(
        TOPICS.cmd("claim"), signed("claim", "resident-1", unit=TOPICS.unit), retained=False
    )
    assert resident.applied and slot.peek() == "resident-1"
    gallery.forget("resident-1")
    forgotten = gate.decide(
        TOPICS.cmd("claim"), signed("claim", "resident-1", unit=TOPICS.unit), retained=False
    )
    assert forgotten.refusal is Refusal.NOT_ENROLLED
