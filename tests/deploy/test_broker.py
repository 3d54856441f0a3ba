"""The broker kit against a real Mosquitto: who may connect, and what gets delivered to whom.

Mosquitto's ACL file is consulted when a message is published and when it is delivered, not when a
client subscribes; so these tests check what is *delivered*, using a message the receiver is allowed
to get as a barrier (the broker handles one client's packets in order, so once the allowed message
arrived, a forbidden one sent before it would have arrived too).
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker
from mqtt_probe import ConnectOutcome, Probe, connect_probe, try_connect

NOT_AUTHORIZED = 0x87


VERIFY_FAILED = "certificate verify failed"


def refused_because(broker: MosquittoBroker, reason: str, attempt: Callable[[], ConnectOutcome]) -> str:
    """Runs a connection attempt that must be refused, and checks the broker logged why: so a test
    cannot pass because of a wrong port or a dead broker."""
    before = broker.log_count(reason)
    outcome = attempt()
    assert not outcome.connected, outcome.detail
    deadline = time.monotonic() + 2.0
    while broker.log_count(reason) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.log_count(reason) > before, f"broker did not log {reason!r}:\n{broker.log_tail()}"
    return outcome.detail


def probe(broker: MosquittoBroker, identity: str) -> Probe:
    cert, key = broker.cert_for(identity)
    return connect_probe(broker.host, broker.port, broker.ca_file, cert, key, identity)


@pytest.fixture
def clients(mosquitto_broker: MosquittoBroker) -> Iterator[dict[str, Probe]]:
    """unit-a, unit-b and the backend consumer, each connected with its own certificate."""
    opened = {name: probe(mosquitto_broker, name) for name in ("unit-a", "unit-b", "backend")}
    yield opened
    for client in opened.values():
        client.close()


# --- Who may connect ---------------------------------------------------------------------------------


def test_a_unit_with_a_certificate_from_the_ca_connects(mosquitto_broker: MosquittoBroker) -> None:
    cert, key = mosquitto_broker.cert_for("unit-ok")
    outcome = try_connect(mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file, cert, key)
    assert outcome.connected, outcome.detail


def test_a_client_without_a_certificate_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    address = (mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file)
    refused_because(mosquitto_broker, "peer did not return a certificate", lambda: try_connect(*address))


def test_plain_mqtt_without_tls_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    address = (mosquitto_broker.host, mosquitto_broker.port, None)
    refused_because(mosquitto_broker, "wrong version number", lambda: try_connect(*address))


def test_a_certificate_from_another_ca_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    cert, key = mosquitto_broker.foreign_cert_for("unit-a")
    address = (mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file)
    refused_because(mosquitto_broker, VERIFY_FAILED, lambda: try_connect(*address, cert, key))


def test_an_expired_certificate_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    cert, key = mosquitto_broker.expired_cert_for("unit-expired")
    address = (mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file)
    refused_because(mosquitto_broker, VERIFY_FAILED, lambda: try_connect(*address, cert, key))


def test_a_revoked_unit_is_refused_once_the_broker_reloads_its_crl(mosquitto_broker: MosquittoBroker) -> None:
    cert, key = mosquitto_broker.cert_for("unit-revoked")
    address = (mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.ca_file)
    assert try_connect(*address, cert, key).connected
    already_connected = probe(mosquitto_broker, "unit-revoked")

    # The new CRL file alone changes nothing: Mosquitto reads it at start and on SIGHUP.
    mosquitto_broker.revoke("unit-revoked", reload=False)
    assert try_connect(*address, cert, key).connected

    mosquitto_broker.reload()
    refused_because(mosquitto_broker, VERIFY_FAILED, lambda: try_connect(*address, cert, key))
    # Revoking one unit leaves the others alone.
    other_cert, other_key = mosquitto_broker.cert_for("unit-still-ok")
    assert try_connect(*address, other_cert, other_key).connected

    # A reload does not drop a connection that was made before the revocation; a restart does
    # (README: "Revoking a unit").
    assert already_connected.client.is_connected()
    mosquitto_broker.stop()
    mosquitto_broker.start()
    refused_because(mosquitto_broker, VERIFY_FAILED, lambda: try_connect(*address, cert, key))
    already_connected.close()


def test_an_expired_crl_locks_every_client_out_until_it_is_re_signed(tmp_path: Path) -> None:
    """Why pki.py has `crl-status`: Mosquitto treats an out-of-date CRL as a verification failure."""
    broker = MosquittoBroker(tmp_path)
    broker.start()
    try:
        cert, key = broker.cert_for("unit-a")
        address = (broker.host, broker.port, broker.ca_file)
        assert try_connect(*address, cert, key).connected

        broker.pki.write_crl(days=90, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=91))
        broker.refresh_config()
        broker.reload()
        refused_because(broker, VERIFY_FAILED, lambda: try_connect(*address, cert, key))

        broker.pki.write_crl()
        broker.refresh_config()
        broker.reload()
        assert try_connect(*address, cert, key).connected
    finally:
        broker.stop()


# --- What is delivered to whom -----------------------------------------------------------------------


def test_the_consumer_receives_a_units_events_status_and_health(clients: dict[str, Probe]) -> None:
    backend, unit_a = clients["backend"], clients["unit-a"]
    backend.subscribe("entrance/+/events")
    backend.subscribe("entrance/+/status")
    backend.subscribe("entrance/+/health")

    for kind in ("events", "status", "health"):
        payload = f'{{"kind": "{kind}"}}'.encode()
        assert unit_a.publish(f"entrance/unit-a/{kind}", payload) == 0
        assert backend.wait_for_message(f"entrance/unit-a/{kind}").payload == payload


def test_a_unit_cannot_publish_on_another_units_topics(clients: dict[str, Probe]) -> None:
    backend, unit_a = clients["backend"], clients["unit-a"]
    backend.subscribe("entrance/#")

    codes = {kind: unit_a.publish(f"entrance/unit-b/{kind}") for kind in ("events", "status", "health")}
    codes["cmd"] = unit_a.publish("entrance/unit-b/cmd/claim")
    assert unit_a.publish("entrance/unit-a/events", b"barrier") == 0
    backend.wait_for_message("entrance/unit-a/events")

    # Mosquitto 2.x answers a denied QoS 1 publish under MQTT v5 with PUBACK 0x87 (not authorised).
    assert codes == dict.fromkeys(codes, NOT_AUTHORIZED)
    assert backend.topics() == ["entrance/unit-a/events"]


def test_a_unit_subscribing_to_another_units_commands_gets_nothing(clients: dict[str, Probe]) -> None:
    backend, unit_a, unit_b = clients["backend"], clients["unit-a"], clients["unit-b"]
    # The broker grants these subscriptions (SUBACK QoS 1: the ACL file does not check SUBSCRIBE) ...
    for topic_filter in ("entrance/unit-b/cmd/#", "entrance/+/cmd/#", "entrance/#", "#", "$SYS/#"):
        assert unit_a.subscribe(topic_filter) == [1]
    unit_b.subscribe("entrance/unit-b/cmd/#")

    # ... but only the unit's own commands are delivered to it.
    assert backend.publish("entrance/unit-b/cmd/claim", b"for b") == 0
    assert unit_b.wait_for_message("entrance/unit-b/cmd/claim").payload == b"for b"
    assert backend.publish("entrance/unit-a/cmd/claim", b"for a") == 0
    unit_a.wait_for_message("entrance/unit-a/cmd/claim")

    assert unit_b.publish("entrance/unit-b/events", b"b's event") == 0
    assert backend.publish("entrance/unit-a/cmd/health", b"barrier") == 0
    unit_a.wait_for_message("entrance/unit-a/cmd/health")

    # Overlapping subscriptions each get a copy under MQTT v5, hence the set.
    assert set(unit_a.topics()) == {"entrance/unit-a/cmd/claim", "entrance/unit-a/cmd/health"}


def test_another_units_retained_status_is_not_delivered(clients: dict[str, Probe]) -> None:
    backend, unit_a, unit_b = clients["backend"], clients["unit-a"], clients["unit-b"]
    # Nobody subscribes yet: PUBACK 0x10 "no matching subscribers", a success code.
    assert unit_b.publish("entrance/unit-b/status", b"online", retain=True) < 0x80
    assert unit_b.publish("entrance/unit-b/health", b"{}", retain=True) < 0x80

    unit_a.subscribe("entrance/+/status")
    unit_a.subscribe("entrance/+/health")
    unit_a.subscribe("entrance/unit-a/cmd/#")
    assert backend.publish("entrance/unit-a/cmd/health", b"barrier") == 0
    unit_a.wait_for_message("entrance/unit-a/cmd/health")
    assert unit_a.topics() == ["entrance/unit-a/cmd/health"]

    # The consumer does get them.
    backend.subscribe("entrance/+/status")
    assert backend.wait_for_message("entrance/unit-b/status").payload == b"online"


def test_only_a_consumer_writes_its_own_status_and_probe(
    mosquitto_broker: MosquittoBroker, clients: dict[str, Probe]
) -> None:
    # A door's status (online/offline, retained) must come from that door's identity alone: neither a
    # unit nor another consumer may write it, or a dead door could be made to look online.
    backend, unit_a = clients["backend"], clients["unit-a"]
    other_consumer = probe(mosquitto_broker, "tail")
    try:
        other_consumer.subscribe("entrance/consumers/+/status")
        for forger in (unit_a, other_consumer):
            forged = forger.publish("entrance/consumers/backend/status", b"online", retain=True)
            assert forged == NOT_AUTHORIZED
            assert forger.publish("entrance/consumers/backend/probe") == NOT_AUTHORIZED
        # A unit's certificate has no corner of its own either: this is how a consumer run with a
        # unit's certificate learns it is not authorised (the broker grants its SUBSCRIBE regardless).
        assert unit_a.publish("entrance/consumers/unit-a/probe") == NOT_AUTHORIZED
        assert backend.subscribe("entrance/consumers/backend/probe") == [1]
        assert backend.publish("entrance/consumers/backend/probe", b"hello me") == 0
        assert backend.wait_for_message("entrance/consumers/backend/probe").payload == b"hello me"
        assert backend.publish("entrance/consumers/backend/status", b"online", retain=True) == 0
        assert other_consumer.wait_for_message("entrance/consumers/backend/status").payload == b"online"
        assert other_consumer.topics() == ["entrance/consumers/backend/status"]
    finally:
        backend.publish("entrance/consumers/backend/status", b"", retain=True)  # clear the retained copy
        other_consumer.close()


def test_a_consumer_cannot_speak_for_a_unit(clients: dict[str, Probe]) -> None:
    backend, unit_a = clients["backend"], clients["unit-a"]
    unit_a.subscribe("entrance/#")
    assert backend.publish("entrance/unit-a/events") == NOT_AUTHORIZED
    assert backend.publish("entrance/unit-a/status") == NOT_AUTHORIZED
    assert backend.publish("entrance/unit-a/cmd/reload", b"barrier") == 0
    unit_a.wait_for_message("entrance/unit-a/cmd/reload")
    assert unit_a.topics() == ["entrance/unit-a/cmd/reload"]


def test_a_consumer_certificate_cannot_publish_unit_topics_under_its_own_name(
    mosquitto_broker: MosquittoBroker, clients: dict[str, Probe]
) -> None:
    # Issue 13, finding 1: with `pattern write <prefix>/%u/events` a consumer's CN was a unit id too.
    backend, unit_a = clients["backend"], clients["unit-a"]
    forger = probe(mosquitto_broker, "tail")
    try:
        for topic_filter in (
            "entrance/tail/#",
            "entrance/unit-a/#",
            "homeassistant/+/tail/#",
            "homeassistant/+/unit-a/#",
        ):
            backend.subscribe(topic_filter)
        forged = [
            ("entrance/tail/events", False),
            ("entrance/tail/status", True),
            ("entrance/tail/health", True),
            ("homeassistant/sensor/tail/last_decision/config", True),
            ("entrance/unit-a/events", False),
            ("homeassistant/sensor/unit-a/last_decision/config", True),
        ]
        for topic, retain in forged:
            assert forger.publish(topic, b'{"type": "recognized"}', retain=retain) == NOT_AUTHORIZED, topic
        assert unit_a.publish("entrance/unit-a/events", b"barrier") == 0
        backend.wait_for_message("entrance/unit-a/events")
    finally:
        forger.close()
    assert [m.payload for m in backend.messages] == [b"barrier"]
    # and nothing forged was retained for a later subscriber either
    late = probe(mosquitto_broker, "backend")
    try:
        late.subscribe("entrance/tail/#")
        late.subscribe("homeassistant/+/tail/#")
        assert unit_a.publish("entrance/unit-a/events", b"barrier") == 0
        time.sleep(0.3)
        assert late.topics() == []
    finally:
        late.close()


def test_a_unit_answers_a_consumer_where_only_that_consumer_reads(
    mosquitto_broker: MosquittoBroker, clients: dict[str, Probe]
) -> None:
    backend, unit_a, unit_b = clients["backend"], clients["unit-a"], clients["unit-b"]
    snoop = probe(mosquitto_broker, "tail")  # another consumer, curious about backend's commands
    try:
        for client in (backend, snoop, unit_b):
            assert client.subscribe("entrance/+/answers/#") == [1]
        snoop.subscribe("entrance/+/events")
        # a unit writes answers under its own id only; a consumer cannot write answers at all
        assert unit_a.publish("entrance/unit-b/answers/backend", b"forged") == NOT_AUTHORIZED
        assert snoop.publish("entrance/unit-a/answers/backend", b"forged") == NOT_AUTHORIZED
        assert unit_a.publish("entrance/unit-a/answers/tail", b"for tail") == 0
        assert snoop.wait_for_message("entrance/unit-a/answers/tail").payload == b"for tail"
        assert unit_a.publish("entrance/unit-a/answers/backend", b"for backend") == 0
        assert backend.wait_for_message("entrance/unit-a/answers/backend").payload == b"for backend"
        # the barrier: an event sent after backend's answer reached tail; backend's answer never did
        assert unit_a.publish("entrance/unit-a/events", b"barrier") == 0
        snoop.wait_for_message("entrance/unit-a/events")
        assert snoop.topics() == ["entrance/unit-a/answers/tail", "entrance/unit-a/events"]
        assert backend.topics() == ["entrance/unit-a/answers/backend"]
        assert unit_b.topics() == []
    finally:
        snoop.close()


def test_home_assistant_discovery_is_per_unit(clients: dict[str, Probe]) -> None:
    backend, unit_a = clients["backend"], clients["unit-a"]
    backend.subscribe("homeassistant/#")

    own = "homeassistant/sensor/unit-a/last_decision/config"
    assert unit_a.publish("homeassistant/sensor/unit-b/last_decision/config") == NOT_AUTHORIZED
    assert unit_a.publish("homeassistant/sensor/x/config") == NOT_AUTHORIZED
    assert unit_a.publish(own, b"{}") == 0
    backend.wait_for_message(own)
    assert backend.topics() == [own]


def test_queued_commands_survive_a_broker_crash(mosquitto_broker: MosquittoBroker) -> None:
    """A unit that is offline gets its queued QoS 1 command after the broker was SIGKILLed and
    restarted: the session and the queue are saved to disk as they change (autosave_on_changes).
    The save follows the PUBACK by a moment (Mosquitto has no write-ahead log), so the test waits for
    it before killing; README documents that window."""
    cert, key = mosquitto_broker.cert_for("unit-sleepy")

    def unit_session() -> Probe:
        return connect_probe(
            mosquitto_broker.host,
            mosquitto_broker.port,
            mosquitto_broker.ca_file,
            cert,
            key,
            "unit-sleepy",
            client_id="unit-sleepy",
            session_expiry_s=600,
        )

    unit = unit_session()
    unit.subscribe("entrance/unit-sleepy/cmd/#")
    unit.close()
    backend = probe(mosquitto_broker, "backend")
    published_ns = time.time_ns()
    assert backend.publish("entrance/unit-sleepy/cmd/claim", b"queued") == 0
    backend.close()
    assert mosquitto_broker.wait_saved(published_ns), "queued command never saved to disk"

    mosquitto_broker.kill()
    mosquitto_broker.start()

    unit = unit_session()
    try:
        assert unit.wait_for_message("entrance/unit-sleepy/cmd/claim").payload == b"queued"
    finally:
        unit.close()


def test_a_broker_whose_free_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deploy.broker.local as local

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = local.free_port
        monkeypatch.setattr(local, "free_port", lambda: next(picks, None) or real_free_port())
        broker = MosquittoBroker(tmp_path)
        assert broker.port == taken
        broker.start()
        try:
            assert broker.port != taken
            cert, key = broker.cert_for("unit-a")
            assert try_connect(broker.host, broker.port, broker.ca_file, cert, key).connected
        finally:
            broker.stop()
