"""Issue 13: a unit acts only on commands signed by a commander it trusts, each once, before expiry.

The broker ACL lets any consumer certificate write a unit's cmd topics (and a broker operator can write
anything); these tests play that attacker against a real Mosquitto and a real ``MqttPublisher``.
"""

from __future__ import annotations

import base64
import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from command_support import TEST_COMMANDER, commander_key, signed
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.cli import main
from device.config import UnitConfig
from device.consumers.commander import SentCommand, send_command
from device.consumers.consumer import ConsumerSettings
from device.events.command_gate import command_table
from device.events.mqtt_publisher import MqttPublisher, MqttSetupError
from device.events.payloads import PayloadError, Topics, build_answer, encode, parse_command
from device.events.signing import (
    UNITS,
    CommandVerifier,
    EventKey,
    SignatureError,
    check_answer,
    load_registry,
    register_key,
)
from device.identity.decide import ClaimSlot
from device.layout import StateLayout
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


def unit_key_registry(config: UnitConfig, directory: Path) -> Path:
    """The consumers' registry holding this unit's event key (what the fleet playbook collects)."""
    path = directory / "unit-keys.json"
    key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    register_key(path, config.unit.id, key.public_text, UNITS)
    return path


def test_the_cli_makes_a_commander_key_and_sends_a_claim_the_unit_answers(
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
    registry = unit_key_registry(config, tmp_path)
    cert, key = mosquitto_broker.cert_for("backend")
    common = ["--unit", unit, "--signing-key", str(key_file), "--name", "door-1", "--host", "localhost",
              "--port", str(mosquitto_broker.port), "--ca", str(mosquitto_broker.ca_file), "--prefix",
              "entrance", "--keys", str(registry)]  # fmt: skip
    try:
        assert publisher.subscribed.wait(10)  # SUBACK: the cmd subscription is in place
        capsys.readouterr()
        assert (
            main(["command", "send", "claim", "s-42", *common, "--cert", str(cert), "--key", str(key)]) == 0
        )
        assert capsys.readouterr().out == "applied\n"
        assert applied == ["s-42"]  # the answer comes after the handler ran
        # reload: this unit was built without a reload handler; the answer says so, and the exit is 1
        assert main(["command", "send", "reload", *common, "--cert", str(cert), "--key", str(key)]) == 1
        assert capsys.readouterr().out == "refused: unsupported\n"
        # a unit's certificate may not write another unit's commands: the broker refuses, the CLI says so
        other_cert, other_key = mosquitto_broker.cert_for("unit-other")
        refused = main(
            ["command", "send", "health", *common, "--cert", str(other_cert), "--key", str(other_key)]
        )
        assert refused == 1 and "refused" in capsys.readouterr().err
    finally:
        publisher.close()


def test_a_replayed_command_is_answered_refused_replayed(mosquitto_broker: Any, tmp_path: Path) -> None:
    unit = "unit-replayed"
    applied: list[str] = []
    config = unit_config(mosquitto_broker, tmp_path, unit)
    publisher = MqttPublisher(config, commands=command_table(on_claim=applied.append)).start()
    keys = load_registry(unit_key_registry(config, tmp_path))
    recorded = signed("claim", "s-1", unit=unit, request_id="r-recorded")
    settings = consumer_settings_for(mosquitto_broker, "backend")

    def send() -> SentCommand:
        return send_command(
            settings, unit, "claim", recorded, answer_timeout_s=10,
            check=lambda data: check_answer(keys, data, unit=unit, request_id="r-recorded"),
        )  # fmt: skip

    try:
        assert publisher.subscribed.wait(10)
        first, replayed = send(), send()
    finally:
        publisher.close()
    assert first.line(10) == "applied" and first.answer is not None
    assert replayed.line(10) == "refused: replayed" and not replayed.applied
    assert applied == ["s-1"]
    # the answer says what was decided, about the command only: no score, box, picture or template
    assert set(first.answer) <= {"schema", "unit", "ts", "request_id", "command", "outcome", "reason",
                                 "subject_id", "sig"}  # fmt: skip


class AnswerForger:
    """Whoever holds the unit's broker certificate but not its event key (a certificate copied off the
    unit, or a broker operator): takes the unit's commands and answers ``applied`` without a signature
    and with a key of its own."""

    def __init__(self, broker: Any, unit: str) -> None:
        self.unit = unit
        self.forged = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for(unit)
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_message = self._forge
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"entrance/{unit}/cmd/#", qos=1)
        assert subscribed.wait(5)

    def _forge(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        command = json.loads(message.payload)
        answer = build_answer(unit=self.unit, request_id=command["request_id"], command=command["command"],
                              refusal=None)  # fmt: skip
        reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        reply.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
        topic = message.properties.ResponseTopic  # type: ignore[union-attr]
        for forged in (answer, commander_key(seed=9).sign(answer)):  # unsigned; signed by another key
            data = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
            client.publish(topic, data, qos=1, properties=reply)  # no waiting: this is the loop thread
        self.forged.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_forged_answer_is_not_taken_for_the_units(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = "unit-forged-answer"
    config = unit_config(mosquitto_broker, tmp_path, unit)
    registry = unit_key_registry(config, tmp_path)  # the real unit's key; the real unit is not running
    forger = AnswerForger(mosquitto_broker, unit)
    key_file = tmp_path / "door.key"
    key_file.write_text(_raw_key_text(commander_key()))
    key_file.chmod(0o600)
    cert, key = mosquitto_broker.cert_for("backend")
    try:
        code = main(["command", "send", "health", "--unit", unit, "--signing-key", str(key_file), "--name",
                     TEST_COMMANDER, "--host", "localhost", "--port", str(mosquitto_broker.port), "--ca",
                     str(mosquitto_broker.ca_file), "--prefix", "entrance", "--keys", str(registry),
                     "--cert", str(cert), "--key", str(key), "--timeout", "3"])  # fmt: skip
        assert forger.forged.is_set()  # the forgeries were sent before the wait ended
    finally:
        forger.close()
    printed = capsys.readouterr()
    assert code == 1 and printed.out == "no answer within 3 s\n"
    assert "unsigned answer" in printed.err and "wrongly signed answer" in printed.err


def _raw_key_text(key: EventKey) -> str:
    raw = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "\n"


def consumer_settings_for(broker: Any, identity: str) -> ConsumerSettings:
    cert, key = broker.cert_for(identity)
    return ConsumerSettings(host="localhost", port=broker.port, ca_file=broker.ca_file, cert_file=cert,
                            key_file=key, prefix="entrance")  # fmt: skip


def test_an_answer_to_another_request_or_from_long_ago_does_not_count() -> None:
    unit_key = commander_key(seed=5)  # stands in for a unit's event key
    keys = {"unit-a": unit_key.private.public_key()}
    answer = build_answer(unit="unit-a", request_id="r-old", command="claim", refusal=None)
    recorded = encode("answer", unit_key.sign(answer))
    with pytest.raises(SignatureError, match="not 'r-new'"):
        check_answer(keys, recorded, unit="unit-a", request_id="r-new")
    with pytest.raises(SignatureError, match="dated"):
        check_answer(keys, recorded, unit="unit-a", request_id="r-old", clock=lambda: time.time() + 3600)
    with pytest.raises(SignatureError, match="not 'unit-b'"):
        check_answer({**keys, "unit-b": keys["unit-a"]}, recorded, unit="unit-b", request_id="r-old")
    assert check_answer(keys, recorded, unit="unit-a", request_id="r-old")["outcome"] == "applied"


def test_a_command_cannot_make_the_unit_answer_outside_its_answer_topics(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    # The response topic is the sender's to choose. The unit's ACL lets it write its own events: an
    # answer there would be a signed message on the topic every consumer reads as decisions.
    unit = "unit-misdirected"
    publisher = MqttPublisher(unit_config(mosquitto_broker, tmp_path, unit)).start()
    listener = Listener(mosquitto_broker, [f"entrance/{unit}/events", f"entrance/{unit}/answers/backend"])
    answers = f"entrance/{unit}/answers/backend"

    def ask(response_topic: str | None, request_id: str) -> None:
        request = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            request.ResponseTopic = response_topic
        request.CorrelationData = request_id.encode()
        message = signed("health", unit=unit, request_id=request_id)
        listener.client.publish(f"entrance/{unit}/cmd/health", message, qos=1, properties=request)

    try:
        assert publisher.subscribed.wait(10)
        ask(f"entrance/{unit}/events", "r-events")
        ask(f"entrance/{unit}/answers/+", "r-wildcard")
        ask(f"entrance/{unit}/answers/backend/x", "r-deeper")
        ask(None, "r-no-answer-asked")
        listener.client.publish(f"entrance/{unit}/cmd/health", b"[[[", qos=1)  # malformed, no response topic
        ask(answers, "r-barrier")  # commands are handled in order: its answer comes after the others'
        assert wait_for(lambda: any(m.topic == answers for m in list(listener.messages)))
        counts = publisher.health_snapshot()["commands"]
    finally:
        listener.close()
        publisher.close()
    assert [m.topic for m in listener.messages] == [answers]
    assert json.loads(listener.messages[0].payload)["request_id"] == "r-barrier"
    assert listener.messages[0].properties.CorrelationData == b"r-barrier"  # type: ignore[union-attr]
    # every health command acted; only the answers were withheld
    assert counts == {"accepted": 5, "rejected": 1, "rejected_unlogged": 0}
