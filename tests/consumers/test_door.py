"""The reference door consumer: gpiozero's mock pin factory stands in for the relay's GPIO pin.

The attacker holds a unit certificate (or the broker): they can put anything on the unit's events
topic. The door must pulse only for a verified, policy-allowed ``recognized`` event.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device.commands.door import run_door
from device.consumers.door import Door, DoorAudit, DoorPolicy, gpio_relay, judge
from device.events.mqtt_publisher import MqttPublisher
from device.events.signing import EventKey, registry_text
from device.layout import StateLayout
from device.types import Decision, DecisionType
from tests.events.test_mqtt_publisher import unit_config, wait_for
from tests.events.test_poison_payloads import RawClient
from tests.events.test_signed_events import signed

RELAY_PIN = 17


class PinWatch:
    """Every state the mock pin goes through, from its own change history."""

    def __init__(self, factory: MockFactory) -> None:
        self.pin = factory.pin(RELAY_PIN)

    def pulses(self) -> int:
        states = [state for _t, state in self.pin.states]
        return sum(1 for before, after in itertools.pairwise(states) if not before and after)


def recognized(subject: str = "s-1", reasons: tuple[str, ...] = ("above_threshold",)) -> dict[str, Any]:
    return {"type": "recognized", "subject": subject, "reasons": list(reasons)}


@pytest.mark.parametrize("kind", ["unknown", "insufficient_quality", "presentation_attack", "anything_new"])
def test_no_type_but_recognized_ever_opens(kind: str) -> None:
    assert judge(DoorPolicy(), {"type": kind, "subject": "s-1", "reasons": []}, 12) is not None


def test_the_policy_checks_subjects_hours_and_claims() -> None:
    policy = DoorPolicy(subjects=("s-1",), hours=((7, 19),), claim_required=True)
    assert judge(policy, recognized(reasons=("claim_verified",)), 8) is None
    assert "not allowed" in str(judge(policy, recognized("s-2", ("claim_verified",)), 8))
    assert "hour" in str(judge(policy, recognized(reasons=("claim_verified",)), 22))
    assert "claim" in str(judge(policy, recognized(), 8))


def test_a_resident_pad_could_not_vouch_for_does_not_open_the_door() -> None:
    """The unit recognised the face, but no cue saw a live person (a grey print at night, held still)."""
    unsure = recognized(reasons=("above_threshold", "second_factor_required"))
    assert "second factor required" in str(judge(DoorPolicy(), unsure, 12))
    assert judge(DoorPolicy(), recognized(reasons=("claim_verified",)), 12) is None  # badge + face


def test_a_pulse_switches_the_relay_on_then_off_even_when_interrupted(tmp_path: Path) -> None:
    factory = MockFactory()
    watch = PinWatch(factory)
    relay = gpio_relay(RELAY_PIN, factory)
    assert watch.pin.state is False  # fail-secure from the start

    def broken_sleep(_seconds: float) -> None:
        raise KeyboardInterrupt

    door = Door(DoorPolicy(pulse_s=0.01), relay, DoorAudit(tmp_path / "audit.jsonl"), sleep=broken_sleep)
    with pytest.raises(KeyboardInterrupt):
        door.on_event(recognized() | {"unit": "u", "seq": 1, "event_id": "e"}, "t")
    assert watch.pulses() == 1 and watch.pin.state is False
    door.close()


@pytest.mark.slow
def test_the_door_opens_only_for_verified_events_over_the_real_broker(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = "unit-door"
    config = unit_config(mosquitto_broker, tmp_path, unit)
    unit_key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({unit: unit_key.public_text}))
    cert, key = mosquitto_broker.cert_for("backend")
    factory = MockFactory()
    watch = PinWatch(factory)
    audit = tmp_path / "door-audit.jsonl"
    args = argparse.Namespace(
        config=None, log_level=None, unit=unit, relay_gpio=RELAY_PIN, policy=None, keys=registry, audit=audit,
        host="localhost", port=mosquitto_broker.port, ca=mosquitto_broker.ca_file, cert=cert, key=key,
        prefix=None, max_age=60.0, timeout=12.0, share="", start_fresh=True,
    )  # fmt: skip
    result: list[int] = []
    door = threading.Thread(target=lambda: result.append(run_door(args, pin_factory=factory)))
    door.start()
    rogue = RawClient(mosquitto_broker, unit)
    publisher = MqttPublisher(config).start()
    try:
        # The door says it listens once the broker granted its subscription (SUBACK).
        said: list[str] = []

        def door_listens() -> bool:
            said.append(capsys.readouterr().err)
            return "door listening on" in "".join(said)

        assert wait_for(door_listens, 15)
        publisher.publish_decision(Decision(DecisionType.RECOGNIZED, "s-1", 0.9, 0.2, 5, ("x",), 1))
        assert wait_for(lambda: watch.pulses() == 1, 10)
        genuine = json.loads(audit.read_text().splitlines()[-1])
        now = time.time()
        attacks = [
            {k: v for k, v in signed(unit_key, unit, 50, when=now).items() if k != "sig"},  # unsigned
            signed(unit_key, unit, 51, when=now) | {"subject": "s-attacker"},  # wrongly signed
            signed(EventKey.load_or_create(tmp_path / "other.key"), unit, 52, when=now),  # other key
            signed(unit_key, unit, genuine["seq"], when=now, subject="s-9"),  # replayed seq
            signed(unit_key, unit, 53, when=now - 3600),  # stale
        ]
        for attack in attacks:
            rogue.publish(f"entrance/{unit}/events", json.dumps(attack).encode())
        publisher.publish_decision(Decision(DecisionType.UNKNOWN, None, None, None, 5, ("x",), 2))
        assert wait_for(lambda: "stay_shut" in audit.read_text(), 10)
    finally:
        rogue.close()
        publisher.close()
        door.join(20)
    assert result == [0]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["open", *["rejected"] * len(attacks), "stay_shut"]
    assert watch.pulses() == 1 and watch.pin.state is False


def test_the_audit_gives_back_each_units_highest_seq_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    audit = DoorAudit(tmp_path / "door-audit.jsonl")
    audit.record({"unit": "u-1", "seq": 4, "event_id": "a", "action": "open"})
    audit.record({"unit": "u-2", "seq": 9, "event_id": "b", "action": "stay_shut", "why": "x"})
    audit.record({"action": "rejected", "topic": "t", "why": "bad signature"})  # no seq of its own
    audit.record({"unit": "u-1", "seq": 6, "event_id": "c", "action": "stay_shut", "why": "x"})
    with audit.path.open("a", encoding="utf-8") as torn:
        torn.write('{"unit": "u-1", "seq": 99, "act')  # power cut mid-write
    assert audit.last_seqs() == {"u-1": 6, "u-2": 9}


def run_door_cli(argv: list[str], result: list[int]) -> threading.Thread:
    """``device door`` as a user runs it (the real argument parser), in a thread of this process."""
    from device.cli import main

    door = threading.Thread(target=lambda: result.append(main(["door", *argv])))
    door.start()
    return door


@pytest.mark.slow
def test_an_event_replayed_after_the_door_restarts_is_refused(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # no GPIO here; the audit says what the relay did
    unit = "unit-door-restart"
    unit_key = EventKey.load_or_create(tmp_path / "unit.key")
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({unit: unit_key.public_text}))
    audit = tmp_path / "door-audit.jsonl"
    cert, key = mosquitto_broker.cert_for("backend")
    argv = ["--unit", unit, "--relay-gpio", str(RELAY_PIN), "--keys", str(registry), "--audit", str(audit),
            "--host", "localhost", "--port", str(mosquitto_broker.port),
            "--ca", str(mosquitto_broker.ca_file), "--cert", str(cert), "--key", str(key),
            "--timeout", "6"]  # fmt: skip
    recorded = json.dumps(signed(unit_key, unit, 7, when=time.time())).encode()  # what an attacker recorded
    attacker = RawClient(mosquitto_broker, unit)
    said: list[str] = []

    def door_listens() -> bool:
        said.append(capsys.readouterr().err)
        return "door listening on" in "".join(said)

    def actions() -> list[str]:
        return (
            [json.loads(line)["action"] for line in audit.read_text().splitlines()] if audit.exists() else []
        )

    try:
        first: list[int] = []
        door = run_door_cli([*argv, "--start-fresh"], first)  # its first start: no seq record yet
        assert wait_for(door_listens, 15)
        attacker.publish(f"entrance/{unit}/events", recorded)
        assert wait_for(lambda: actions() == ["open"], 10)
        door.join(20)
        said.clear()
        second: list[int] = []
        door = run_door_cli(argv, second)  # the door restarts (same audit file)
        assert wait_for(door_listens, 15)
        attacker.publish(f"entrance/{unit}/events", recorded)  # the replay
        fresh = json.dumps(signed(unit_key, unit, 8, when=time.time())).encode()
        attacker.publish(f"entrance/{unit}/events", fresh)  # the control: a new event still opens
        assert wait_for(lambda: len(actions()) == 3, 10)
        door.join(20)
    finally:
        attacker.close()
    assert first == [0] and second == [0]
    assert actions() == ["open", "rejected", "open"]
    replay = json.loads(audit.read_text().splitlines()[1])
    assert "seq" in replay["why"], replay
