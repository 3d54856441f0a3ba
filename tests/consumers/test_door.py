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
from device.events.mqtt_publisher import MqttPublisher, event_key_path
from device.events.signing import EventKey, registry_text
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


def test_the_door_opens_only_for_verified_events_over_the_real_broker(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-door"
    config = unit_config(mosquitto_broker, tmp_path, unit)
    unit_key = EventKey.load_or_create(event_key_path(config))
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({unit: unit_key.public_text}))
    cert, key = mosquitto_broker.cert_for("backend")
    factory = MockFactory()
    watch = PinWatch(factory)
    audit = tmp_path / "door-audit.jsonl"
    args = argparse.Namespace(
        config=None, log_level=None, unit=unit, relay_gpio=RELAY_PIN, policy=None, keys=registry, audit=audit,
        host="localhost", port=mosquitto_broker.port, ca=mosquitto_broker.ca_file, cert=cert, key=key,
        prefix=None, max_age=60.0, timeout=12.0,
    )  # fmt: skip
    result: list[int] = []
    door = threading.Thread(target=lambda: result.append(run_door(args, pin_factory=factory)))
    door.start()
    rogue = RawClient(mosquitto_broker, unit)
    publisher = MqttPublisher(config).start()
    try:
        time.sleep(1.5)  # the door connects and subscribes (it prints that on stderr; a thread here)
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
