"""Hypothesis fuzz targets, one per decoder of received MQTT payloads.

The property is the same for all: whatever bytes arrive, the decoder returns a payload that matches its
schema or raises ``PayloadError``; nothing else escapes (no RecursionError, UnicodeError, KeyError...).
A short run is part of ``make test``; ``make fuzz`` sets ``FUZZ_EXAMPLES=100000`` per decoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from command_support import TEST_COMMANDER, commander_key, signed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.consumers.consumer import check_event
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
    validate,
)
from device.events.signing import CommandVerifier
from device.types import Decision, DecisionType

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TOPICS = Topics("entrance", "unit-fuzz")


def valid_samples() -> dict[str, dict[str, Any]]:
    decision = Decision(DecisionType.RECOGNIZED, "s-1", 0.9, 0.2, 5, ("stable",), 1)
    health, _ = build_health(
        HealthParts(
            "unit-fuzz",
            3.0,
            {"depth": 0, "bytes": 0, "dropped": 0, "last_seq": 4},
            {"connected": True, "reconnects": 0, "refused": 0},
            {"accepted": 0, "rejected": 0},
            (),
        ),
        {"fps": 9.5, "accelerator": {"detector": {"state": "cpu"}}},
    )
    return {
        "event": build_event(
            decision, seq=1, unit="unit-fuzz", models={"detector": "d@1"}, gallery_version="g1"
        ),
        "status": build_status("unit-fuzz", "online", "connected", "abcd1234"),
        "health": health,
        "cmd": json.loads(
            signed("claim", "s-1", unit=TOPICS.unit, request_id="r1", issued=1767225600.0, ttl_s=60.0)
        ),
    }


SAMPLES = valid_samples()
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


@st.composite
def mutated_sample(draw: st.DrawFn, kind: str) -> bytes:
    """A valid payload with one field replaced, removed or added: close to what a parser accepts."""
    payload = dict(SAMPLES[kind])
    key = draw(st.sampled_from(sorted(payload)) | st.text(max_size=12))
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "drop":
        payload.pop(key, None)
    else:
        payload[key] = draw(json_values)
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def bracket_bomb(draw: st.DrawFn) -> bytes:
    opener = draw(st.sampled_from([b"[", b'{"a":', b'[{"b":', b"[1,"]))
    return opener * draw(st.integers(0, 2500)) + draw(st.binary(max_size=20))


def hostile_bytes(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=MAX_PAYLOAD_BYTES + 64),
        json_values.map(lambda value: json.dumps(value).encode()),
        mutated_sample(kind),
        bracket_bomb(),
        st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    )


def holds_the_contract(kind: str, decoder: Callable[[bytes], dict[str, Any] | Any], data: bytes) -> None:
    try:
        result = decoder(data)
    except PayloadError:
        return
    if isinstance(result, dict):
        validate(kind, result)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["event", "status", "health", "cmd"])
@pytest.mark.slow
def test_decode_refuses_cleanly_or_returns_a_valid_payload(kind: str) -> None:
    @FUZZ
    @given(hostile_bytes(kind))
    def run(data: bytes) -> None:
        holds_the_contract(kind, lambda raw: decode(kind, raw), data)  # type: ignore[arg-type]

    run()


TRUSTED_COMMANDERS = CommandVerifier({TEST_COMMANDER: commander_key().private.public_key()})


def test_parse_command_refuses_cleanly_on_any_topic_and_payload() -> None:
    topic = st.sampled_from([TOPICS.cmd(name) for name in ("claim", "reload", "health", "x")]) | st.text(
        max_size=60
    )

    @FUZZ
    @given(topic, hostile_bytes("cmd"))
    def run(name: str, data: bytes) -> None:
        try:
            command = parse_command(TOPICS, name, data)
            # what the unit does next: the signer must be a trusted commander (refusal = PayloadError)
            TRUSTED_COMMANDERS.verify(command.payload)
        except PayloadError:
            return
        assert TOPICS.command_name(name) == command.name

    run()


def test_check_event_refuses_cleanly_on_any_topic_and_payload() -> None:
    topic = st.sampled_from(["entrance/unit-fuzz/events", "entrance/other/events"]) | st.text(max_size=60)

    @FUZZ
    @given(topic, hostile_bytes("event"))
    def run(name: str, data: bytes) -> None:
        holds_the_contract("event", lambda raw: check_event(name, raw), data)

    run()


def test_the_valid_samples_decode() -> None:
    # Guards the fuzz targets themselves: if the samples were invalid, every mutation would be refused.
    for kind, payload in SAMPLES.items():
        assert decode(kind, encode(kind, payload)) == payload  # type: ignore[arg-type]
