"""Run-time broker problems are one clear ERROR naming host, port and the file at fault, with the same
hint as `device doctor`; repeats while retrying do not flood the log (issue 17). Real Mosquitto."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from device.events.mqtt_publisher import MqttPublisher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_mqtt_publisher import decision, unit_config, wait_for


def broker_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name.startswith("device.events") and r.levelno == level
    ]


def test_a_wrong_ca_is_one_error_naming_host_port_and_the_ca_file(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from deploy.broker.pki import Pki

    other = Pki(tmp_path / "other-pki")
    other.init(ca_name="another CA")
    config = unit_config(mosquitto_broker, tmp_path, "unit-wrong-ca")
    tls = config.mqtt.tls.model_copy(update={"ca_file": other.ca_cert_path})
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"tls": tls})})
    caplog.set_level(logging.DEBUG, logger="device.events")
    publisher = MqttPublisher(config).start()
    try:
        assert wait_for(lambda: len(broker_records(caplog, logging.DEBUG)) >= 2, timeout=15)
        health = publisher.health_snapshot()
    finally:
        publisher.close()
    errors = broker_records(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert f"localhost:{mosquitto_broker.port}" in errors[0]
    assert str(other.ca_cert_path) in errors[0] and "does not chain" in errors[0] and "Fix:" in errors[0]
    assert len(broker_records(caplog, logging.WARNING)) <= 1  # the retries are not a WARNING each
    assert "broker_connection" in health["alarms"]


def test_connection_refused_names_host_and_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from broker import free_port

    class NoBroker:
        port = free_port()
        ca_file = tmp_path / "ca.crt"

        def cert_for(self, identity: str) -> tuple[Path, Path]:
            return tmp_path / "u.crt", tmp_path / "u.key"

    from deploy.broker.pki import Pki

    pki = Pki(tmp_path / "pki")
    pki.init()
    files = pki.issue_client("unit-nobroker", "unit")
    config = unit_config(NoBroker(), tmp_path, "unit-nobroker")
    tls = config.mqtt.tls.model_copy(
        update={"ca_file": pki.ca_cert_path, "cert_file": files.cert, "key_file": files.key}
    )
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"tls": tls})})
    caplog.set_level(logging.INFO, logger="device.events")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1))
        assert wait_for(lambda: bool(broker_records(caplog, logging.ERROR)), timeout=10)
        time.sleep(0.5)
    finally:
        publisher.close()
    errors = broker_records(caplog, logging.ERROR)
    assert any(f"nothing accepts connections on localhost:{NoBroker.port}" in e for e in errors), errors


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_certificate_named_for_another_unit_gets_the_name_hint_once(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = unit_config(mosquitto_broker, tmp_path, "unit-fake2", cert_identity="unit-real2")
    caplog.set_level(logging.INFO, logger="device.events")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1))
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["refused"] >= 1)
    finally:
        publisher.close()
    hints = [e for e in broker_records(caplog, logging.ERROR) if "'unit-fake2'" in e]
    assert len(hints) == 1, broker_records(caplog, logging.ERROR)
    assert "certificate" in hints[0] and str(config.mqtt.tls.cert_file) in hints[0]


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_run_time_not_authorized_names_the_cn_against_unit_id_as_doctor_does(
    mosquitto_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker accepts the connection (a valid certificate) and refuses every event with 0x87: its ACL
    # knows this unit only by the certificate's CN, which is another unit's name.
    from device.ops.doctor import certificate_check

    config = unit_config(mosquitto_broker, tmp_path, "unit-fake3", cert_identity="unit-real3")
    caplog.set_level(logging.INFO, logger="device.events")
    publisher = MqttPublisher(config).start()
    try:
        publisher.publish_decision(decision(1))
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["refused"] >= 1)
    finally:
        publisher.close()
    mismatch = "issued to 'unit-real3' but unit.id is 'unit-fake3'"
    hints = [e for e in broker_records(caplog, logging.ERROR) if mismatch in e]
    assert len(hints) == 1, broker_records(caplog, logging.ERROR)
    assert "Not authorized" in hints[0] and "`device doctor`" in hints[0]
    assert "set [unit] id = 'unit-real3', or issue a certificate for 'unit-fake3'" in hints[0]
    doctor = certificate_check(config)
    assert not doctor.ok and mismatch in doctor.detail  # the same words as doctor's own check
