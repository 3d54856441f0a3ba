"""What the unit says on MQTT: topics, payload builders, and schema validation of every payload.

Each payload kind has a JSON Schema (draft 2020-12, ``additionalProperties: false``) in
``device/events/schemas/``; the same files are what consumers validate against (``device events tail``) and
what docs/asyncapi.yaml refers to. A payload that fails its schema or exceeds ``MAX_PAYLOAD_BYTES``
never reaches the outbox: ``PayloadError`` is raised instead, because a consumer that silently drops a
malformed event is worse than a unit that refuses to emit it.

Events carry decisions only. The builder takes a ``Decision`` (which holds no pixels, boxes or vectors)
plus model and gallery versions, so there is no path by which biometric data could be serialised.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Literal

from jsonschema import Draft202012Validator

from device.errors import UserError
from device.types import Decision, DecisionType

MAX_PAYLOAD_BYTES = 2048
# Deeper than any schema needs (health's pipeline report is the deepest, at 4). Checked on the raw
# bytes before parsing, so that no payload can drive json's recursive parser into RecursionError.
MAX_NESTING = 16
EVENT_SCHEMA = "entrance-camera/event/1"
STATUS_SCHEMA = "entrance-camera/status/1"
HEALTH_SCHEMA = "entrance-camera/health/1"
ANSWER_SCHEMA = "entrance-camera/answer/1"
COMMANDS = ("claim", "reload", "health")
# A command is for now: a claim is for the person at the door, minutes not hours (a long-lived claim
# would be a standing order).
MAX_COMMAND_LIFETIME_S = 600.0
# Clocks of the sender and the unit (both NTP) may differ a little; a command from further ahead is refused.
COMMAND_CLOCK_SKEW_S = 30.0

# decide.Reason.CLAIM_NOT_MATCHED; events may not import identity (layering), so the value is named here.
CLAIM_NOT_MATCHED = "claim_not_matched"

PayloadKind = Literal["event", "status", "health", "cmd", "answer"]

# Who may read an answer: a broker identity (certificate CN), the PKI's rule, so no wildcard or level
# separator can reach a topic.
IDENTITY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SUBJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PayloadError(UserError, ValueError):
    """A payload that does not match its schema or is too large; it must not be published."""


class Refusal(StrEnum):
    """Why the unit did not act on a command: the reason code of its ``refused`` answer."""

    MALFORMED = "malformed"  # not a command for this topic (schema, JSON, size, topic/payload mismatch)
    RETAINED = "retained"  # a retained message would replay on every connect
    WRONG_UNIT = "wrong_unit"  # signed for another unit
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued further ahead than the clock skew allowed
    UNTRUSTED = "untrusted"  # no trusted commander's valid signature
    REPLAYED = "replayed"  # its request id has acted before
    UNSUPPORTED = "unsupported"  # this unit has no handler for it
    NOT_ENROLLED = "not_enrolled"  # a claim for a subject the unit does not know
    CLOCK_UNSYNCHRONISED = "clock_not_synchronised"  # the unit cannot tell a fresh command from a recording
    FAILED = "failed"  # the handler refused it for another reason


class CommandRefusedError(PayloadError):
    """A command the unit will not act on, with the reason code its answer carries."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Topics:
    """The unit's topics: ``<prefix>/<unit>/{events,status,health,cmd/<name>}``."""

    prefix: str
    unit: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.unit}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def cmd_filter(self) -> str:
        return f"{self.base}/cmd/#"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def answers(self, identity: str) -> str:
        """Where this unit answers the commands of broker identity ``identity`` (only it may read there)."""
        return f"{self.base}/answers/{identity}"

    def answer_reader(self, topic: str) -> str | None:
        """The identity an answer topic belongs to, or None when ``topic`` is not exactly one of this
        unit's answer topics: the unit never answers anywhere else, whatever a command asks."""
        head = f"{self.base}/answers/"
        if not topic.startswith(head):
            return None
        identity = topic[len(head) :]
        return identity if IDENTITY_PATTERN.fullmatch(identity) else None

    def command_name(self, topic: str) -> str | None:
        """The command a topic addresses, or None when it is not exactly one of this unit's cmd topics."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None


@cache
def _validator(kind: PayloadKind) -> Draft202012Validator:
    text = resources.files("device.events.schemas").joinpath(f"{kind}.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_document(kind: PayloadKind) -> dict[str, Any]:
    schema: dict[str, Any] = _validator(kind).schema
    return schema


def _control_characters(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) holding a control character or a lone surrogate.

    Python's ``$`` in the schemas' patterns also matches before a final newline, so ``"unit-a\n"`` would
    pass ``^[a-z0-9-]+$``; no field has a use for control characters, and a terminal must not get them.
    """
    if isinstance(value, str):
        if any(ord(char) < 0x20 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF for char in value):
            return path or "(top)"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _control_characters(str(key), f"{path}/{key!r}") or _control_characters(
                item, f"{path}/{key}"
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _control_characters(item, f"{path}/{index}")
            if found:
                return found
    return None


def validate(kind: PayloadKind, payload: Mapping[str, Any]) -> None:
    bad = _control_characters(payload)
    if bad is not None:
        raise PayloadError(f"{kind} payload has a control character in {bad!a}")
    errors = sorted(_validator(kind).iter_errors(payload), key=lambda error: list(error.absolute_path))
    if errors:
        details = "; ".join(
            f"{'/'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
            for error in errors[:5]
        )
        raise PayloadError(f"{kind} payload does not match its schema: {details}")


def encode(kind: PayloadKind, payload: Mapping[str, Any]) -> bytes:
    """Validated, compact JSON bytes, at most ``MAX_PAYLOAD_BYTES``."""
    validate(kind, payload)
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{kind} payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return data


def nesting_depth(data: bytes) -> int:
    """The deepest ``[``/``{`` nesting in JSON bytes, ignoring brackets inside strings; a linear scan."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a duplicated key: one payload, two meanings.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise PayloadError("duplicate key in a JSON object")
    return result


def decode(kind: PayloadKind, data: bytes) -> dict[str, Any]:
    """Parses and validates a received payload (consumers, command handling).

    Anything a sender can put in ``data`` ends as ``PayloadError`` and nothing else: size and nesting
    are checked before parsing, NaN/Infinity and duplicate keys are refused while parsing.
    """
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{kind} payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    depth = nesting_depth(data)
    if depth > MAX_NESTING:
        raise PayloadError(f"{kind} payload nests {depth} deep; the limit is {MAX_NESTING}")
    try:
        payload = json.loads(
            data.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # JSONDecodeError is a ValueError; RecursionError cannot happen below MAX_NESTING but costs
        # nothing to name, and it must never reach a paho callback.
        if isinstance(error, PayloadError):
            raise
        raise PayloadError(f"{kind} payload is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"{kind} payload is not a JSON object")
    validate(kind, payload)
    return payload


def uuid7(unix_ms: int | None = None) -> str:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits.

    Time-ordered ids sort close to ``seq`` order and index well in consumers' databases; the random
    part keeps ids unique across units without coordination.
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand_a = secrets.randbits(12)
    rand_b = secrets.randbits(62)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    hex_ = f"{value:032x}"
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


def utc_timestamp(when: float | None = None) -> str:
    """RFC 3339 in UTC with milliseconds and a ``Z``: ``2025-01-31T12:00:00.123Z``."""
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def build_event(
    decision: Decision,
    *,
    seq: int,
    unit: str,
    models: Mapping[str, str],
    gallery_version: str | None,
    event_id: str | None = None,
    when: float | None = None,
    unknown_scores: bool = False,
) -> dict[str, Any]:
    """The event for one decision; raises ``PayloadError`` if it would not match the schema.

    Similarity and margin go out for a recognised visitor only: for anyone else they say how close a
    stranger came to a resident, which no consumer needs. ``unknown_scores`` (``mqtt.unknown_scores``)
    sends them for unknown visits too, for threshold tuning. A claim that did not match never reports
    the visitor's similarity to the claimed resident, whatever the setting: that number would let a
    caller probe how alike a person is to a named resident.
    """
    scored = decision.type is DecisionType.RECOGNIZED or (
        unknown_scores and decision.type is DecisionType.UNKNOWN and CLAIM_NOT_MATCHED not in decision.reasons
    )
    event = {
        "schema": EVENT_SCHEMA,
        "event_id": event_id or uuid7(),
        "seq": seq,
        "unit": unit,
        "ts": utc_timestamp(when),
        "type": decision.type.value,
        "subject": decision.subject_id,
        "similarity": _rounded(decision.similarity) if scored else None,
        "margin": _rounded(decision.margin) if scored else None,
        "frames": decision.frames,
        "reasons": list(decision.reasons),
        "models": dict(models),
        "gallery_version": gallery_version,
    }
    if decision.pad is not None:
        liveness: dict[str, Any] = {
            "passed": decision.pad.passed,
            "score": _rounded(decision.pad.score),
            "cues": {name: _rounded(score) for name, score in decision.pad.cues.items()},
        }
        if decision.pad.assurance is not None:
            liveness["assurance"] = decision.pad.assurance
        event["liveness"] = liveness
    validate("event", event)
    return event


def build_status(unit: str, state: Literal["online", "offline"], reason: str, session: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "unit": unit,
        "state": state,
        "reason": reason,
        "session": session,
    }
    # The Will is registered at connect time and sent later by the broker: a timestamp in it would lie.
    if reason != "connection_lost":
        status["ts"] = utc_timestamp()
    return status


@dataclass(frozen=True)
class HealthParts:
    """Everything the publisher knows about itself; the pipeline's part is added separately."""

    unit: str
    uptime_s: float
    outbox: Mapping[str, Any]
    mqtt: Mapping[str, Any]
    commands: Mapping[str, int]
    alarms: Sequence[str]
    clock_synchronised: bool | None = None  # None: not checked (mqtt.clock_check = "off")


# Pipeline health fields that say someone is at the door right now. Health is retained, so the broker
# hands the latest copy to every consumer certificate that subscribes, at any time: presence stays out
# unless the unit's config asks for it (``mqtt.health_presence``).
PRESENCE_FIELDS = frozenset({"active_tracks", "claim_pending"})


def build_health(
    parts: HealthParts, pipeline: Mapping[str, Any] | None, *, presence: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """The health payload and the problems found in the pipeline's part.

    A pipeline report that does not fit the schema is left out (and named in the alarms) rather than
    blocking health altogether: the outbox and connection state matter most when something is wrong.
    ``presence`` keeps the ``PRESENCE_FIELDS`` of the pipeline's report; by default they are dropped.
    """
    problems: list[str] = []
    health: dict[str, Any] = {
        "schema": HEALTH_SCHEMA,
        "unit": parts.unit,
        "ts": utc_timestamp(),
        "uptime_s": round(parts.uptime_s, 1),
        "outbox": dict(parts.outbox),
        "mqtt": dict(parts.mqtt),
        "commands": dict(parts.commands),
        "alarms": list(parts.alarms),
    }
    if parts.clock_synchronised is not None:
        health["clock_synchronised"] = parts.clock_synchronised
    if pipeline:
        raw_alarms = pipeline.get("alarms", ())
        extra_alarms = [str(alarm) for alarm in raw_alarms] if isinstance(raw_alarms, list | tuple) else []
        left_out = {"alarms"} if presence else {"alarms", *PRESENCE_FIELDS}
        report = {key: value for key, value in pipeline.items() if key not in left_out}
        candidate = {**health, "pipeline": report, "alarms": [*health["alarms"], *extra_alarms][:16]}
        try:
            validate("health", candidate)
            health = _trimmed(candidate, problems)
        except PayloadError as error:
            problems.append(str(error))
            health["alarms"] = [*health["alarms"], "pipeline_health_invalid"][:16]
    validate("health", health)
    return health, problems


def _size(payload: Mapping[str, Any]) -> int:
    return len(json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=True))


def _trimmed(health: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Health under the payload limit: the pipeline's largest entries go first, and that is named."""
    report = dict(health["pipeline"])
    dropped: list[str] = []
    while _size({**health, "pipeline": report}) > MAX_PAYLOAD_BYTES - 40 and report:
        largest = max(report, key=lambda key: _size({key: report[key]}))
        dropped.append(largest)
        del report[largest]
    if not dropped:
        return health
    problems.append(f"health over {MAX_PAYLOAD_BYTES} bytes: left out {', '.join(dropped)}")
    return {**health, "pipeline": report, "alarms": [*health["alarms"], "health_trimmed"][:16]}


@dataclass(frozen=True)
class Command:
    """A schema-checked, in-time command; ``payload`` is what the commander signed (checked by the caller)."""

    name: str
    subject_id: str | None
    request_id: str
    expires_at: float
    commander: str
    payload: Mapping[str, Any]


def epoch_seconds(timestamp: str) -> float:
    """Seconds since the epoch for a schema-checked RFC 3339 UTC time (``...Z``)."""
    try:
        return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise PayloadError(f"{timestamp!r} is not a time") from None


def check_command_times(name: str, issued_at: float, expires_at: float, now: float) -> None:
    """Refuses a command that has expired, is not yet issued, or lives too long."""
    if expires_at <= now:
        raise CommandRefusedError(Refusal.EXPIRED, f"stale {name}: expired {now - expires_at:.0f} s ago")
    if issued_at > now + COMMAND_CLOCK_SKEW_S:
        raise CommandRefusedError(
            Refusal.NOT_YET_VALID, f"{name} issued {issued_at - now:.0f} s in the future"
        )
    if not 0 < expires_at - issued_at <= MAX_COMMAND_LIFETIME_S:
        raise CommandRefusedError(
            Refusal.MALFORMED, f"{name} lifetime must be within (0, {MAX_COMMAND_LIFETIME_S:.0f}] s"
        )


def parse_command(topics: Topics, topic: str, data: bytes, now: float | None = None) -> Command:
    """A command for this unit, strictly validated; ``PayloadError`` for anything else.

    Every command carries issue and expiry times and is refused once expired (``now``: the unit's clock);
    whether its signer is trusted is ``device.events.signing.CommandVerifier``'s to say.
    """
    name = topics.command_name(topic)
    if name is None:
        raise CommandRefusedError(Refusal.MALFORMED, f"not one of this unit's command topics: {topic!r}")
    if name not in COMMANDS:
        raise CommandRefusedError(Refusal.MALFORMED, f"unknown command {name!r}")
    try:
        payload = decode("cmd", data)
    except PayloadError as error:
        raise CommandRefusedError(Refusal.MALFORMED, str(error)) from None
    if payload["command"] != name:
        raise CommandRefusedError(
            Refusal.MALFORMED, f"payload command {payload['command']!r} does not match topic command {name!r}"
        )
    if payload["unit"] != topics.unit:
        # The signed unit id, not the topic: a command recorded on one unit's topic and replayed on
        # another's still names the first.
        raise CommandRefusedError(
            Refusal.WRONG_UNIT, f"{name} is for unit {payload['unit']!r}, not this one ({topics.unit!r})"
        )
    expires_at = epoch_seconds(payload["expires_at"])
    check_command_times(
        name, epoch_seconds(payload["issued_at"]), expires_at, time.time() if now is None else now
    )
    return Command(
        name, payload.get("subject_id"), payload["request_id"], expires_at, payload["commander"], payload
    )


def build_answer(
    *,
    unit: str,
    request_id: str | None,
    command: str | None,
    refusal: Refusal | None,
    subject_id: str | None = None,
    when: float | None = None,
) -> dict[str, Any]:
    """The unit's answer to one command (signed by the caller): ``applied``, or ``refused`` with its
    reason. It names the command and, only when the command itself named one, its subject: never
    anything the unit saw."""
    answer: dict[str, Any] = {
        "schema": ANSWER_SCHEMA,
        "unit": unit,
        "ts": utc_timestamp(when),
        "request_id": request_id,
        "command": command,
        "outcome": "applied" if refusal is None else "refused",
        "reason": None if refusal is None else refusal.value,
    }
    if subject_id is not None:
        answer["subject_id"] = subject_id
    validate("answer", answer)
    return answer


def command_fields(data: bytes) -> tuple[str | None, str | None]:
    """``(request_id, command)`` of a command that was refused, as far as its bytes give them, so that
    even a malformed command's answer can name its request; anything unreadable is None."""
    if len(data) > MAX_PAYLOAD_BYTES or nesting_depth(data) > MAX_NESTING:
        return None, None
    try:
        payload = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(payload, dict):
        return None, None
    request, command = payload.get("request_id"), payload.get("command")
    request_id = request if isinstance(request, str) and REQUEST_ID_PATTERN.fullmatch(request) else None
    return request_id, command if command in COMMANDS else None
