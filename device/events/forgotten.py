"""``subject_forgotten``: the signed event a unit publishes when it forgets a subject.

``device forget`` and ``device purge-expired`` run beside the unit's service, not in it; they commit
the event to the unit's own outbox (SQLite, the same transaction that assigns its ``seq``), and the
service's sender picks it up on its next turn like any event. It names the pseudonymous subject id and
nothing else about the person (no name: that was destroyed with the subject's data key), so that
archives (``device events archive``) can replace the subject's id in the rows they hold with a tombstone:
the access log keeps that a door opened, no longer for whom.
"""

from __future__ import annotations

from typing import Any, Literal

from device.events.outbox import Outbox, OutboxEntry
from device.events.payloads import EVENT_SCHEMA, Topics, encode, utc_timestamp, uuid7, validate
from device.events.signing import EventKey

FORGOTTEN_TYPE = "subject_forgotten"
# Fixed words, never the operator's free-text reason (that stays in the unit's audit log).
ForgetReason = Literal["forgotten_on_request", "enrolment_expired"]


def build_subject_forgotten(
    *, seq: int, unit: str, subject_id: str, reason: ForgetReason, when: float | None = None
) -> dict[str, Any]:
    """The event, schema-checked; a decision-shaped record with no scores and no frames."""
    event: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "event_id": uuid7(),
        "seq": seq,
        "unit": unit,
        "ts": utc_timestamp(when),
        "type": FORGOTTEN_TYPE,
        "subject": subject_id,
        "similarity": None,
        "margin": None,
        "frames": 0,
        "reasons": [reason],
        "models": {},
        "gallery_version": None,
    }
    validate("event", event)
    return event


def announce_forgotten(
    outbox: Outbox, key: EventKey, topics: Topics, subject_id: str, reason: ForgetReason
) -> OutboxEntry:
    """Commits the signed event to the outbox; the unit's sender publishes it (now, or once it is back)."""

    def build(seq: int) -> tuple[str, bytes]:
        event = build_subject_forgotten(seq=seq, unit=topics.unit, subject_id=subject_id, reason=reason)
        return str(event["event_id"]), encode("event", key.sign(event))

    return outbox.append(topics.events, build)
