"""One TLS client context for the unit and every consumer: the same refusals, named by file."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device.consumers.consumer import ConsumerSettings, tls_context
from device.events.tls import TlsSetupError, client_tls_context


def test_every_file_is_required(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match="all required"):
        client_tls_context(tmp_path / "ca.pem", None, tmp_path / "key.pem")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match=f"TLS file not found: {tmp_path / 'ca.pem'}"):
        client_tls_context(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")


def test_a_key_that_is_not_the_certificates_is_refused(mosquitto_broker: Any) -> None:
    cert, _ = mosquitto_broker.cert_for("tail")
    _, other_key = mosquitto_broker.cert_for("backend")
    with pytest.raises(TlsSetupError, match="cannot load the client certificate"):
        client_tls_context(Path(mosquitto_broker.ca_file), Path(cert), Path(other_key))


def test_a_consumer_checks_the_brokers_name_like_the_unit(mosquitto_broker: Any) -> None:
    cert, key = mosquitto_broker.cert_for("tail")
    settings = ConsumerSettings("localhost", mosquitto_broker.port, Path(mosquitto_broker.ca_file), cert, key)
    context = tls_context(settings)
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_events_tail_with_a_missing_ca_says_so_in_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"units": {}}')
    missing = tmp_path / "ca.pem"
    result = subprocess.run(
        [sys.executable, "-m", "device", "events", "tail", "--host", "127.0.0.1", "--port", "1", "--ca",
         str(missing), "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"),
         "--keys", str(keys), "--timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot connect to 127.0.0.1:1: TLS file not found: {missing}"
    ]


def test_a_3_gb_certificate_is_refused_before_openssl_reads_it(mosquitto_broker: Any, tmp_path: Path) -> None:
    """Issue 25, point 7: TLS files are files the CLI takes too (``--ca/--cert/--key``, ``[mqtt.tls]``)."""
    _, key = mosquitto_broker.cert_for("tail")
    huge = tmp_path / "cert.pem"
    huge.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    os.truncate(huge, 3 * 1024**3)
    with pytest.raises(TlsSetupError, match=f"TLS file {huge} is 3221225472 bytes"):
        client_tls_context(Path(mosquitto_broker.ca_file), huge, Path(key))
