"""The reference door consumer: verified events in, a relay pulse out only when the policy says so.

Fail-secure throughout: the relay is off unless a verified ``recognized`` event for an allowed subject
in an allowed hour (and, if the policy says so, with a verified claim) arrives; any other event type
(``unknown``, ``insufficient_quality``, an attack decision such as ``presentation_attack``, or a type
this code has never heard of) keeps the door shut. Events reach this module only after
``EventConsumer`` with an ``EventVerifier`` checked signature, unit, freshness and ``seq`` order.

Every decision, open or not, is one JSON line in the door's own audit file; on start the last ``seq``
per unit is read back from it, so an old event replayed after a restart of the door is still refused.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from device.atomicio import open_unit_file, parse_json, read_capped, read_unit_file
from device.errors import EXIT_USAGE, UserError

log = logging.getLogger(__name__)

OPENING_TYPE = "recognized"
CLAIM_VERIFIED = "claim_verified"
SECOND_FACTOR_REQUIRED = "second_factor_required"  # the unit's reason: PAD uncertain, no claim


MAX_POLICY_BYTES = 1024 * 1024


class DoorPolicy(BaseModel):
    """Who may open, when. Loaded from JSON (``--policy``); unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subjects: tuple[str, ...] | None = Field(
        default=None, description="subject ids that may open; null = any recognised resident"
    )
    hours: tuple[tuple[int, int], ...] = Field(
        default=((0, 24),), description="local [start, end) hours in which the door may open"
    )
    claim_required: bool = Field(default=False, description="open only on a verified claim (badge + face)")
    pulse_s: float = Field(default=3.0, gt=0.0, le=30.0)

    @classmethod
    def load(cls, path: Path | None) -> DoorPolicy:
        if path is None:
            return cls()
        return cls.model_validate(parse_json(read_capped(path, MAX_POLICY_BYTES, "door policy"), str(path)))


def judge(policy: DoorPolicy, event: Mapping[str, Any], local_hour: int) -> str | None:
    """None when the door opens for this (verified) event, else why not."""
    if event.get("type") != OPENING_TYPE:
        return f"type {event.get('type')!r} never opens"
    subject = event.get("subject")
    if not isinstance(subject, str):
        return "no subject"
    if policy.subjects is not None and subject not in policy.subjects:
        return f"subject {subject} not allowed"
    if not any(start <= local_hour < end for start, end in policy.hours):
        return f"hour {local_hour} outside the allowed hours"
    if policy.claim_required and CLAIM_VERIFIED not in event.get("reasons", ()):
        return "no verified claim"
    if SECOND_FACTOR_REQUIRED in event.get("reasons", ()):
        # The unit recognised the face but its PAD could not vouch for a person in front of it.
        return "second factor required: liveness uncertain, no verified claim"
    return None


class Relay(Protocol):
    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


MOCK_PINS_HINT = "for a trial without a relay set GPIOZERO_PIN_FACTORY=mock"


class RelayError(UserError):
    """The relay's GPIO pin cannot be driven here (no pin factory, a pin in use or unknown)."""

    exit_code = EXIT_USAGE  # the machine or the pin number must change: a restart cannot help


def gpio_relay(pin: int, pin_factory: Any = None) -> Relay:
    """A gpiozero output, off at start and when closed (fail-secure: a dead process leaves it shut).

    Off a Raspberry Pi (or without lgpio) gpiozero tries each pin factory, warns once per failure and
    ends in ``BadPinFactory``: that becomes one ``RelayError`` line naming the mock pin factory."""
    from gpiozero import DigitalOutputDevice
    from gpiozero.exc import BadPinFactory, GPIOZeroError, PinFactoryFallback

    with warnings.catch_warnings(record=True) as fallbacks:
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            device: Relay = DigitalOutputDevice(
                pin, active_high=True, initial_value=False, pin_factory=pin_factory
            )
        except BadPinFactory as error:
            tried = "; ".join(str(w.message) for w in fallbacks if issubclass(w.category, PinFactoryFallback))
            raise RelayError(
                f"no GPIO pin factory works on this machine ({tried or error}); on a Raspberry Pi install "
                f"lgpio (apt install python3-lgpio); {MOCK_PINS_HINT}"
            ) from None
        except GPIOZeroError as error:
            raise RelayError(f"the relay on GPIO {pin}: {error}") from None
    return device


class DoorAudit:
    """Append-only JSON lines, fsynced: what the door did and why."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps({"at": time.time(), **entry}, sort_keys=True) + "\n"
        with self._lock:
            fd = open_unit_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)

    def last_seqs(self) -> dict[str, int]:
        """The highest verified ``seq`` per unit seen before (to refuse replays after a restart)."""
        seqs: dict[str, int] = {}
        if not self.path.exists():
            return seqs
        for line in read_unit_file(self.path).splitlines():
            try:
                entry = json.loads(line)
                unit, seq = str(entry["unit"]), int(entry["seq"])
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a torn last line after a power cut (half a UTF-8 character), or no seq
            seqs[unit] = max(seq, seqs.get(unit, 0))
        return seqs


@dataclass
class Door:
    policy: DoorPolicy
    relay: Relay
    audit: DoorAudit
    local_hour: Callable[[], int] = lambda: dt.datetime.now().hour
    sleep: Callable[[float], None] = time.sleep
    # One line per decision for whoever runs the door (the audit file keeps the full record).
    report: Callable[[str], None] = lambda _line: None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.pulses = 0

    def on_event(self, event: dict[str, Any], topic: str) -> None:
        """A verified event: open if the policy allows, record either way."""
        why_not = judge(self.policy, event, self.local_hour())
        entry = {"unit": event.get("unit"), "seq": event.get("seq"), "event_id": event.get("event_id")}
        visit = f"{event.get('unit')} #{event.get('seq')} {event.get('type')}"
        if why_not is not None:
            self.audit.record({**entry, "action": "stay_shut", "why": why_not})
            self.report(f"{visit}: kept shut ({why_not})")
            return
        self.audit.record({**entry, "action": "open", "subject": event.get("subject")})
        self.report(f"{visit}: opened for {event.get('subject')}")
        self.pulse()

    def on_rejected(self, topic: str, problem: str) -> None:
        self.audit.record({"action": "rejected", "topic": topic, "why": problem[:300]})

    def pulse(self) -> None:
        with self._lock:
            try:
                self.relay.on()
                self.pulses += 1
                self.sleep(self.policy.pulse_s)
            finally:
                self.relay.off()

    def close(self) -> None:
        try:
            self.relay.off()
        finally:
            self.relay.close()
