"""Issue 13: every event is signed by a key made on the unit; consumers refuse what is not.

The attacker here holds a unit certificate (stolen, or the broker itself is compromised): the broker's
ACL lets them publish on that unit's events topic, so only the signature stands between them and a
consumer that opens a door.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from device.events.mqtt_publisher import MqttPublisher
from device.events.payloads import MAX_PAYLOAD_BYTES, PayloadError, build_event, decode, encode
from device.events.signing import (
    EventKey,
    EventVerifier,
    SignatureError,
    load_registry,
    registry_text,
)
from device.layout import StateLayout
from device.types import Decision, DecisionType
from tests.events.test_mqtt_publisher import REPO, Listener, decision, unit_config, wait_for
from tests.events.test_poison_payloads import RawClient


def signed(
    key: EventKey, unit: str, seq: int, *, when: float | None = None, subject: str = "s-1"
) -> dict[str, Any]:
    event = build_event(
        Decision(DecisionType.RECOGNIZED, subject, 0.9, 0.2, 5, ("stable",), seq),
        seq=seq,
        unit=unit,
        models={"detector": "d@1"},
        gallery_version="g1",
        when=when,
    )
    return key.sign(event)


def test_the_key_is_made_once_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "event-signing.key"
    first = EventKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert EventKey.load_or_create(path).public_text == first.public_text
    path.chmod(0o644)
    with pytest.raises(PayloadError, match="chmod 600"):
        EventKey.load_or_create(path)


def test_a_signed_event_stays_under_the_size_limit_and_matches_the_schema(tmp_path: Path) -> None:
    key = EventKey.load_or_create(tmp_path / "k")
    data = encode("event", signed(key, "unit-a", 1))
    assert len(data) < MAX_PAYLOAD_BYTES
    assert decode("event", data)["sig"]


def test_the_verifier_refuses_unsigned_forged_other_unit_replayed_and_stale_events(tmp_path: Path) -> None:
    unit_key = EventKey.load_or_create(tmp_path / "a.key")
    other_key = EventKey.load_or_create(tmp_path / "b.key")
    now = time.time()
    verifier = EventVerifier(
        {"unit-a": load_key(unit_key), "unit-b": load_key(other_key)}, max_age_s=60, clock=lambda: now
    )
    verifier.verify(signed(unit_key, "unit-a", 5, when=now))
    cases = {
        "unsigned": {k: v for k, v in signed(unit_key, "unit-a", 6, when=now).items() if k != "sig"},
        "wrongly signed": {**signed(unit_key, "unit-a", 7, when=now), "subject": "s-2"},
        "wrongly signed ": signed(other_key, "unit-a", 8, when=now),  # unit-b's key speaking as unit-a
        "not in the key registry": signed(other_key, "unit-x", 9, when=now),
        "replayed": signed(unit_key, "unit-a", 5, when=now),
        "stale": signed(unit_key, "unit-a", 10, when=now - 120),
        "future": signed(unit_key, "unit-a", 11, when=now + 3600),
    }
    for reason, event in cases.items():
        with pytest.raises(SignatureError, match=reason.strip()):
            verifier.verify(event)
    verifier.verify(signed(unit_key, "unit-a", 12, when=now))


def load_key(key: EventKey) -> Any:
    return key.private.public_key()


def registry_for(path: Path, keys: dict[str, EventKey]) -> Path:
    path.write_text(registry_text({unit: key.public_text for unit, key in keys.items()}))
    return path


def test_a_registry_with_a_broken_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"units": {"unit-a": "not-a-key"}}))
    with pytest.raises(PayloadError):
        load_registry(path)


BROKEN_REGISTRIES = [
    ("{}", 'no "units" object in it; expected {"units": {"<name>": "<base64url public key>", ...}}'),
    ("[]", 'no "units" object in it'),
    ('{"units": []}', 'no "units" object in it'),
    ('{"units": {"unit-a": 3}}', "every key must be a string"),
    ("units: nope", "not JSON"),
    ('{"units": {"unit-a": "not-a-key"}}', "the key of 'unit-a' is not a base64url Ed25519 public key"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN_REGISTRIES, ids=[text for text, _ in BROKEN_REGISTRIES])
def test_a_broken_registry_is_one_line_saying_what_it_should_hold(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(PayloadError) as refused:
        load_registry(path)
    assert str(refused.value).startswith(f"unit key registry {path}: ")
    assert message in str(refused.value)
    assert "Error(" not in str(refused.value)  # no KeyError('units') or TypeError(...) repr


def test_the_door_given_an_empty_registry_says_so_in_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device.cli import main

    keys = tmp_path / "keys.json"
    keys.write_text("{}")
    broker_files = []
    for option, name in (("--ca", "ca.crt"), ("--cert", "door.crt"), ("--key", "door.key")):
        (tmp_path / name).write_text("")
        broker_files += [option, str(tmp_path / name)]
    code = main(
        ["door", "--unit", "unit-a", "--relay-gpio", "17", "--keys", str(keys), *broker_files]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f'error: unit key registry {keys}: no "units" object in it; '
                                'expected {"units": {"<name>": "<base64url public key>", ...}}']  # fmt: skip


def test_events_tail_prints_signed_events_and_rejects_each_forgery_with_one_line(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-signed"
    config = unit_config(mosquitto_broker, tmp_path, unit)
    unit_key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    registry = registry_for(tmp_path / "keys.json", {unit: unit_key})
    capture = Listener(mosquitto_broker, [f"entrance/{unit}/events"])
    publisher = MqttPublisher(config).start()
    tail: subprocess.Popen[str] | None = None
    rogue = RawClient(mosquitto_broker, unit)  # the unit's certificate in the attacker's hands
    stranger = RawClient(mosquitto_broker, "unit-stranger")
    try:
        publisher.publish_decision(decision(1, DecisionType.RECOGNIZED))
        publisher.publish_decision(decision(2, DecisionType.RECOGNIZED))
        assert wait_for(lambda: len(capture.messages) == 2)
        old = bytes(capture.messages[0].payload)  # captured earlier, replayed later
        cert, key = mosquitto_broker.cert_for("tail")
        tail = subprocess.Popen(
            [sys.executable, "-m", "device", "events", "tail", "--count", "2", "--timeout", "30",
             "--host", "localhost", "--port", str(mosquitto_broker.port),
             "--ca", str(mosquitto_broker.ca_file),
             "--cert", str(cert), "--key", str(key), "--unit", "+", "--keys", str(registry)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert tail.stderr is not None
        assert "listening on entrance/+/events" in tail.stderr.readline()
        publisher.publish_decision(decision(3, DecisionType.RECOGNIZED))
        assert wait_for(lambda: len(capture.messages) == 3)
        genuine = json.loads(capture.messages[2].payload)
        # New event ids: a payload that reuses a seen id is dropped as a redelivery before any check.
        fresh_id = genuine["event_id"][:-4] + "0000"
        unsigned = {k: v for k, v in genuine.items() if k != "sig"} | {"event_id": fresh_id}
        forged_subject = genuine | {"subject": "s-attacker", "event_id": fresh_id[:-1] + "1"}
        for payload in (json.dumps(unsigned).encode(), json.dumps(forged_subject).encode(), old):
            rogue.publish(f"entrance/{unit}/events", payload)
        stranger_key = EventKey.load_or_create(tmp_path / "stranger.key")
        stranger.publish(
            "entrance/unit-stranger/events", encode("event", signed(stranger_key, "unit-stranger", 1))
        )
        publisher.publish_decision(decision(4, DecisionType.RECOGNIZED))
        out, err = tail.communicate(timeout=40)
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
        rogue.close()
        stranger.close()
        capture.close()
        publisher.close()
    assert tail.returncode == 0, err
    assert [line.split()[2] for line in out.splitlines()] == ["#3", "#4"]
    assert "s-attacker" not in out
    rejected = [line for line in err.splitlines() if line.startswith("rejected on")]
    assert len(rejected) == 4, err
    assert "unsigned event" in rejected[0]
    assert "wrongly signed" in rejected[1]
    assert "replayed event" in rejected[2] and "seq 1 after seq 3" in rejected[2]
    assert "not in the key registry" in rejected[3]


def test_events_key_prints_the_units_public_key(tmp_path: Path) -> None:
    config = tmp_path / "unit.toml"
    config.write_text(f'[unit]\nid = "lobby-1"\nstate_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "device", "events", "key", "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
    )  # fmt: skip
    printed = json.loads(done.stdout)
    key = EventKey.load_or_create(tmp_path / "state" / "signing" / "event-signing.key")
    assert printed == {"unit": "lobby-1", "public_key": key.public_text}


def test_a_unit_registered_after_the_consumer_started_is_picked_up_but_a_known_key_is_never_replaced(
    tmp_path: Path,
) -> None:
    from device.events.signing import register_key

    now = time.time()
    first = EventKey.load_or_create(tmp_path / "first.key")
    later = EventKey.load_or_create(tmp_path / "later.key")
    registry = registry_for(tmp_path / "keys.json", {"unit-a": first})
    verifier = EventVerifier(load_registry(registry), max_age_s=60, clock=lambda: now, registry_path=registry)
    with pytest.raises(SignatureError, match="not in the key registry"):
        verifier.verify(signed(later, "unit-b", 1, when=now))

    register_key(registry, "unit-b", later.public_text)  # `device events key --register`
    verifier.verify(signed(later, "unit-b", 2, when=now))

    # An attacker who can write the registry file swaps unit-a's key: the running consumer keeps the
    # key it first trusted, and `--register` refuses another key for a registered unit.
    registry_for(registry, {"unit-a": later, "unit-b": later})
    with pytest.raises(SignatureError, match="wrongly signed"):
        verifier.verify(signed(later, "unit-a", 3, when=now))
    with pytest.raises(PayloadError, match="another key"):
        register_key(registry, "unit-b", first.public_text)
