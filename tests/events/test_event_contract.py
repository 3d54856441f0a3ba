"""The event contract: schemas, builders and what a payload may (not) contain."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from command_support import signed
from jsonschema import Draft202012Validator

from device.events.payloads import (
    MAX_PAYLOAD_BYTES,
    HealthParts,
    PayloadError,
    Topics,
    build_event,
    build_health,
    build_status,
    decode,
    encode,
    parse_command,
    utc_timestamp,
    uuid7,
)
from device.types import Decision, DecisionType, PadOutcome

SCHEMAS = Path(__file__).resolve().parents[2] / "device" / "events" / "schemas"
TOPICS = Topics("entrance", "lobby-1")
MODELS = {"detector": "blazeface_full_range@int8", "embedder": "dlib_resnet_v1@int8"}


def recognized(subject: str = "s-7f3a9c", reasons: tuple[str, ...] = ("above_threshold",)) -> Decision:
    return Decision(DecisionType.RECOGNIZED, subject, 0.961234567, 0.0412345, 9, reasons, 4)


@pytest.mark.parametrize("kind", ["event", "status", "health", "cmd"])
def test_every_schema_is_draft_2020_12_and_closed(kind: str) -> None:
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    closed = (
        [schema]
        if "oneOf" not in schema
        else [schema["$defs"][name] for name in ("claim", "reload", "health")]
    )
    for part in closed:
        assert part["additionalProperties"] is False


def test_uuid7_has_version_7_the_rfc_variant_and_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_uuid7_ids_are_unique_and_sort_by_time() -> None:
    ids = [uuid7(unix_ms=1_700_000_000_000 + i) for i in range(200)]
    assert len(set(ids)) == 200
    assert ids == sorted(ids)


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    assert utc_timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_timestamp())


def test_an_event_carries_the_decision_and_versions_and_nothing_else() -> None:
    event = build_event(recognized(), seq=12, unit="lobby-1", models=MODELS, gallery_version="4-abc")
    assert set(event) == {
        "schema", "event_id", "seq", "unit", "ts", "type", "subject", "similarity", "margin", "frames",
        "reasons", "models", "gallery_version",
    }  # fmt: skip
    assert event["seq"] == 12 and event["type"] == "recognized" and event["subject"] == "s-7f3a9c"
    assert event["similarity"] == 0.9612 and event["margin"] == 0.0412
    assert decode("event", encode("event", event)) == event


def test_an_unknown_visitor_is_never_named() -> None:
    stranger = Decision(DecisionType.UNKNOWN, None, 0.81, 0.02, 6, ("below_threshold",), 2)
    event = build_event(stranger, seq=1, unit="lobby-1", models=MODELS, gallery_version=None)
    assert event["subject"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("embedding", [0.1] * 128),
        ("image", "aGVsbG8="),
        ("boxes", [[1, 2, 3, 4]]),
    ],
)
def test_biometric_or_image_fields_do_not_pass_the_schema(field: str, value: object) -> None:
    event = build_event(recognized(), seq=1, unit="lobby-1", models=MODELS, gallery_version="1")
    with pytest.raises(PayloadError, match="Additional properties"):
        encode("event", {**event, field: value})


def test_a_subject_id_with_odd_characters_is_refused_before_the_outbox() -> None:
    with pytest.raises(PayloadError, match="subject"):
        build_event(
            recognized(subject="Barack Obama"), seq=1, unit="lobby-1", models=MODELS, gallery_version="1"
        )


def test_the_largest_event_the_schema_allows_stays_under_2_kb() -> None:
    worst = build_event(
        recognized(subject="s" * 64, reasons=tuple("r" * 40 for _ in range(12))),
        seq=2**53,
        unit="u" * 63,
        models={"detector": "d" * 96, "embedder": "e" * 96},
        gallery_version="g" * 64,
    )
    assert len(encode("event", worst)) < MAX_PAYLOAD_BYTES


def test_status_from_the_will_has_no_timestamp_but_online_has_one() -> None:
    will = build_status("lobby-1", "offline", "connection_lost", "0123456789abcdef")
    online = build_status("lobby-1", "online", "connected", "0123456789abcdef")
    assert "ts" not in will and "ts" in online
    for status in (will, online):
        decode("status", encode("status", status))


def health_parts() -> HealthParts:
    return HealthParts(
        unit="lobby-1",
        uptime_s=12.34,
        outbox={"depth": 2, "bytes": 600, "dropped": 0, "last_seq": 40, "oldest_age_s": 1.5},
        mqtt={"connected": True, "reconnects": 1, "refused": 0, "last_refusal": None},
        commands={"accepted": 1, "rejected": 2},
        alarms=[],
    )


def test_health_includes_a_valid_pipeline_report() -> None:
    pipeline = {
        "fps": 14.8,
        "stage_ms": {"detect": 5.0},
        "accelerator": {"blazeface_full_range": "cpu"},
        "gallery": {"size": 3, "version": "4-abc", "state": "ok"},
        "alarms": ["no_gallery"],
    }
    health, problems = build_health(health_parts(), pipeline)
    assert problems == []
    assert health["pipeline"]["accelerator"] == {"blazeface_full_range": "cpu"}
    assert health["alarms"] == ["no_gallery"]
    decode("health", encode("health", health))


def test_a_bad_pipeline_report_is_left_out_and_raised_as_an_alarm() -> None:
    # An image-sized string or deeply nested data has no place in health.
    for bad in ({"fps": 15.0, "last_crop": "A" * 4000}, {"a": {"b": {"c": {"d": 1}}}}):
        health, problems = build_health(health_parts(), bad)
        assert "pipeline" not in health
        assert "pipeline_health_invalid" in health["alarms"]
        assert problems


def test_an_oversized_pipeline_report_is_trimmed_largest_first_and_flagged() -> None:
    stages = {
        f"stage_{i}": {"p50": 1.25, "p95": 2.5, "p99": 3.5, "min": 0.5, "max": 9.75, "count": 123456}
        for i in range(24)
    }
    report = {"fps": 14.9, "latency_ms": stages, "capture": {"reconnects": 0}}
    health, problems = build_health(health_parts(), report)
    assert len(encode("health", health)) <= MAX_PAYLOAD_BYTES
    assert "latency_ms" not in health["pipeline"] and health["pipeline"]["fps"] == 14.9
    assert "health_trimmed" in health["alarms"] and problems


def test_a_claim_command_is_parsed_from_its_own_topic() -> None:
    data = signed("claim", "s-7f3a9c", unit="lobby-1", request_id="r1", issued=1767268800.0, ttl_s=30.0)
    command = parse_command(TOPICS, "entrance/lobby-1/cmd/claim", data, now=1767268810.0)
    assert (command.name, command.subject_id, command.request_id) == ("claim", "s-7f3a9c", "r1")
    assert command.commander == "test-door" and command.payload["sig"]


@pytest.mark.parametrize(
    ("topic", "payload", "problem"),
    [
        ("entrance/lobby-2/cmd/claim", {"command": "claim", "subject_id": "s-1"}, "not one of this unit"),
        ("entrance/lobby-1/cmd/export", {"command": "export"}, "unknown command"),
        ("entrance/lobby-1/cmd/claim", {"command": "reload"}, "does not match"),
        ("entrance/lobby-1/cmd/claim", {"command": "claim"}, "schema"),
        ("entrance/lobby-1/cmd/claim", {"command": "claim", "subject_id": "s-1", "dump": True}, "schema"),
        ("entrance/lobby-1/cmd/claim", {"command": "claim", "subject_id": "../../etc"}, "schema"),
        ("entrance/lobby-1/cmd/health/extra", {"command": "health"}, "not one of this unit"),
    ],
)
def test_anything_but_the_allowed_commands_is_rejected(
    topic: str, payload: dict[str, object], problem: str
) -> None:
    with pytest.raises(PayloadError, match=problem):
        parse_command(TOPICS, topic, json.dumps(payload).encode())


def test_non_json_and_oversized_commands_are_rejected() -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        parse_command(TOPICS, "entrance/lobby-1/cmd/reload", b"\xff\xfe")
    with pytest.raises(PayloadError, match="limit"):
        parse_command(TOPICS, "entrance/lobby-1/cmd/reload", b" " * 5000)


def test_the_asyncapi_document_names_our_topics_and_schema_files() -> None:
    doc = (SCHEMAS.parents[2] / "docs" / "asyncapi.yaml").read_text()
    assert doc.startswith("#") and "\nasyncapi: 3.0.0\n" in doc
    topics = Topics("{prefix}", "{unit}")
    for address in (topics.events, topics.status, topics.health, topics.cmd("{command}"),
                    topics.answers("{identity}")):  # fmt: skip
        assert f"address: '{address}'" in doc
    referenced = set(re.findall(r"\$ref: '\.\./device/events/schemas/(\w+)\.json'", doc))
    assert referenced == {path.stem for path in SCHEMAS.glob("*.json")}


def test_a_presentation_attack_event_carries_pad_scores_and_names_nobody() -> None:
    pad = PadOutcome(False, 0.03, {"texture": 0.03, "frame_edges": 0.2, "geometry": None}, ("texture",))
    attack = Decision(DecisionType.PRESENTATION_ATTACK, None, None, None, 9, ("pad_texture",), 4, pad)
    event = build_event(attack, seq=3, unit="lobby-1", models=MODELS, gallery_version="1")
    assert event["type"] == "presentation_attack" and event["subject"] is None
    assert event["liveness"] == {
        "passed": False,
        "score": 0.03,
        "cues": {"texture": 0.03, "frame_edges": 0.2, "geometry": None},
    }


@pytest.mark.parametrize(
    "cues",
    [
        {"texture": "data:image/jpeg;base64,/9j/4AAQ"},  # a picture smuggled in as a cue
        {"texture": [0.1] * 128},  # an embedding
        {f"cue_{i}": 0.5 for i in range(9)},  # more cues than the schema allows
        {"Texture Crop": 0.5},
    ],
)
def test_liveness_scores_cannot_carry_pictures_or_vectors(cues: dict[str, object]) -> None:
    event = build_event(recognized(), seq=1, unit="lobby-1", models=MODELS, gallery_version="1")
    event["liveness"] = {"passed": True, "score": 0.9, "cues": cues}
    schema = json.loads((SCHEMAS / "event.json").read_text())
    assert list(Draft202012Validator(schema).iter_errors(event))
