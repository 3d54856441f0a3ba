"""Issue 13: a unit acts only on commands signed by a commander it trusts, each once, before expiry.

The broker ACL lets any consumer certificate write a unit's cmd topics (and a broker operator can write
anything); these tests play that attacker against a real Mosquitto and a real ``MqttPublisher``.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from command_support import TEST_COMMANDER, commander_key, signed

from device.cli import main
from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher, MqttSetupError
from device.events.payloads import PayloadError, Topics, parse_command
from device.events.signing import CommandVerifier, SignatureError, load_registry
from device.identity.decide import ClaimSlot
from tests.events.test_mqtt_publisher import Listener, unit_config, wait_for

TOPICS = Topics("entrance", "unit-a")
TRUSTED = CommandVerifier({TEST_COMMANDER: commander_key().private.public_key()})


def verify(data: bytes, verifier: CommandVerifier = TRUSTED) -> None:
    verifier.verify(parse_command(TOPICS, TOPICS.cmd(json.loads(data)["command"]), data).payload)


def test_a_command_signed_by_a_trusted_commander_is_taken() -> None:
    verify(signed("claim", "s-1", unit=TOPICS.unit))
    verify(signed("reload", unit=TOPICS.unit))


def test_an_unsigned_command_does_not_even_parse() -> None:
    payload = json.loads(signed("claim", "s-1", unit=TOPICS.unit))
    del payload["sig"]
    with pytest.raises(PayloadError, match="schema"):
        parse_command(TOPICS, TOPICS.cmd("claim"), json.dumps(payload).encode())


@pytest.mark.parametrize(
    ("forged", "why"),
    [
        (lambda: signed("claim", "s-1", unit=TOPICS.unit, key=commander_key(seed=2)), "wrongly signed"),
        (
            lambda: signed("claim", "s-1", unit=TOPICS.unit, key=commander_key(seed=2), commander="intruder"),
            "does not trust",
        ),
    ],
)
def test_a_claim_signed_by_another_key_is_refused(forged: Any, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        verify(forged())


def test_a_signed_claim_whose_subject_was_changed_on_the_way_is_refused() -> None:
    payload = json.loads(signed("claim", "s-1", unit=TOPICS.unit))
    payload["subject_id"] = "s-2"  # a broker or proxy rewrites whom the door should let in
    with pytest.raises(SignatureError, match="wrongly signed"):
        verify(json.dumps(payload).encode())


def test_a_unit_that_trusts_no_commander_refuses_every_command() -> None:
    with pytest.raises(SignatureError, match="trusts no commander"):
        verify(signed("claim", "s-1", unit=TOPICS.unit), CommandVerifier.from_config(None))


def test_a_broken_trust_file_stops_the_unit_with_one_line(mosquitto_broker: Any, tmp_path: Path) -> None:
    broken = tmp_path / "commanders.json"
    broken.write_text('{"commanders": {"door": "not-a-key"}}')
    with pytest.raises(MqttSetupError, match=r"mqtt\.command_keys"):
        MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-broken-trust", command_keys=str(broken)))


def test_over_a_real_broker_only_the_trusted_fresh_first_claim_applies(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    unit = "unit-signed"
    claims = ClaimSlot(window_s=60)
    applied: list[str] = []

    def take(subject: str) -> None:
        applied.append(subject)
        claims.set(subject)

    publisher = MqttPublisher(
        unit_config(mosquitto_broker, tmp_path, unit), commands=command_table(on_claim=take)
    ).start()
    attacker = Listener(mosquitto_broker, [f"entrance/{unit}/health"])  # a consumer certificate
    topic = f"entrance/{unit}/cmd/claim"
    tampered = json.loads(signed("claim", "s-good", unit=unit, request_id="r-t"))
    tampered["subject_id"] = "s-evil"
    unsigned = json.loads(signed("claim", "s-evil", unit=unit))
    del unsigned["sig"]
    valid = signed("claim", "s-good", unit=unit, request_id="r-ok")
    try:
        assert publisher.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
        attacker.publish(topic, json.dumps(unsigned).encode())
        attacker.publish(topic, signed("claim", "s-evil", unit=unit, key=commander_key(seed=2)))
        attacker.publish(
            topic, signed("claim", "s-evil", unit=unit, key=commander_key(seed=2), commander="intruder")
        )
        attacker.publish(topic, json.dumps(tampered).encode())
        attacker.publish(topic, signed("claim", "s-evil", unit=unit, issued=time.time() - 120, ttl_s=60))
        attacker.publish(topic, valid)
        attacker.publish(topic, valid)  # recorded and replayed
        assert wait_for(lambda: sum(publisher.health_snapshot()["commands"].values()) >= 7)
        counts = publisher.health_snapshot()["commands"]
    finally:
        attacker.close()
        publisher.close()
    assert applied == ["s-good"]
    assert counts == {"accepted": 1, "rejected": 6, "rejected_unlogged": 0}


def test_the_cli_makes_a_commander_key_and_sends_a_claim_the_unit_takes(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file, trusted = tmp_path / "door.key", tmp_path / "trust" / "commanders.json"
    trusted.parent.mkdir()
    assert main(["command", "key", "--signing-key", str(key_file), "--name", "door-1", "--register",
                 str(trusted)]) == 0  # fmt: skip
    made = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert set(load_registry(trusted, "commanders")) == {"door-1"} and made["commander"] == "door-1"
    unit = "unit-cli-claim"
    applied: list[str] = []
    config = unit_config(mosquitto_broker, tmp_path, unit, command_keys=str(trusted))
    publisher = MqttPublisher(config, commands=command_table(on_claim=applied.append)).start()
    cert, key = mosquitto_broker.cert_for("backend")
    common = ["--unit", unit, "--signing-key", str(key_file), "--name", "door-1", "--host", "localhost",
              "--port", str(mosquitto_broker.port), "--ca", str(mosquitto_broker.ca_file), "--prefix",
              "entrance"]  # fmt: skip
    try:
        assert publisher.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
        assert (
            main(["command", "send", "claim", "s-42", *common, "--cert", str(cert), "--key", str(key)]) == 0
        )
        assert wait_for(lambda: applied == ["s-42"])
        # a unit's certificate may not write another unit's commands: the broker refuses, the CLI says so
        other_cert, other_key = mosquitto_broker.cert_for("unit-other")
        capsys.readouterr()
        refused = main(
            ["command", "send", "health", *common, "--cert", str(other_cert), "--key", str(other_key)]
        )
        assert refused == 1 and "refused" in capsys.readouterr().err
    finally:
        publisher.close()
