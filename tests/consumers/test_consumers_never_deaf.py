"""Issue 26: a consumer that cannot listen says why on stderr and exits non-zero, within seconds.

Before, `device events tail`, `device door` and `device events archive` waited up to 30 s for a SUBACK,
then went on "listening" to nothing and exited 0. Each case here is one way a consumer ends up deaf,
run through the real CLI against the real Mosquitto with the project's config and ACL: nothing on the
port, a host name that does not resolve, a CA that is not the broker's, and a unit's certificate used
by a consumer (Mosquitto grants its SUBSCRIBE and silently delivers nothing; the consumer's own access
probe is what the broker refuses).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from broker import free_port

from deploy.broker.pki import Pki
from device.cli import main
from device.events.signing import EventKey, registry_text
from tests.events.test_mqtt_publisher import wait_for
from tests.events.test_poison_payloads import RawClient
from tests.events.test_signed_events import signed

# Comfortably below the 30 s the commands used to wait, and far above what a refusal takes.
QUICKLY_S = 8.0


def consumer_argv(command: str, tmp_path: Path, connection: list[str]) -> list[str]:
    registry = tmp_path / "keys.json"
    if not registry.exists():
        registry.write_text(
            registry_text({"unit-x": EventKey.load_or_create(tmp_path / "u.key").public_text})
        )
    common = [*connection, "--keys", str(registry), "--timeout", "30"]
    if command == "tail":
        return ["events", "tail", *common]
    if command == "archive":
        return ["events", "archive", *common, "--db", str(tmp_path / "archive.db")]
    return [
        "door",
        "--unit",
        "unit-x",
        "--relay-gpio",
        "17",
        "--audit",
        str(tmp_path / "audit.jsonl"),
        "--start-fresh",  # a first start: the door refuses to start without its seq record
        *common,
    ]


def connection(broker: Any, identity: str, **changes: str) -> list[str]:
    cert, key = broker.cert_for(identity)
    options = {
        "--host": "localhost",
        "--port": str(broker.port),
        "--ca": str(broker.ca_file),
        "--cert": str(cert),
        "--key": str(key),
    } | {f"--{name}": value for name, value in changes.items()}
    return [part for pair in options.items() for part in pair]


def run_consumer(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], float]:
    capsys.readouterr()
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    return code, capsys.readouterr().err.splitlines(), elapsed


@pytest.fixture
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # the door's relay, off a Pi


def other_ca(tmp_path: Path) -> Path:
    pki = Pki(tmp_path / "other-pki")
    pki.init(ca_name="another CA")
    return pki.ca_cert_path


CASES = {
    # name: (identity, option changes, what the one error line must say)
    "refused": ("backend", {"port": "FREE"}, "connection refused"),
    "unknown host": ("backend", {"host": "no-such-broker.invalid"}, "unknown host 'no-such-broker.invalid'"),
    "foreign CA": ("backend", {"ca": "OTHER"}, "does not chain to the CA"),
    "unit certificate": ("unit-deaf", {}, "does not let certificate"),
}


@pytest.mark.parametrize("command", ["tail", "door", "archive"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_consumer_that_cannot_listen_says_why_and_exits_non_zero(
    command: str,
    case: str,
    mosquitto_broker: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mock_pins: None,
) -> None:
    identity, changes, cause = CASES[case]
    resolved = {
        name: str(free_port()) if value == "FREE" else str(other_ca(tmp_path)) if value == "OTHER" else value
        for name, value in changes.items()
    }
    argv = consumer_argv(command, tmp_path, connection(mosquitto_broker, identity, **resolved))
    code, stderr, elapsed = run_consumer(argv, capsys)
    errors = [line for line in stderr if line.startswith("error:")]
    assert code != 0, stderr
    assert len(errors) == 1 and cause in errors[0], stderr
    assert not any("listening on" in line for line in stderr), stderr
    assert elapsed < QUICKLY_S, (elapsed, stderr)


def test_a_unit_certificate_is_named_with_its_cn(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _key = mosquitto_broker.cert_for("unit-deaf")
    argv = consumer_argv("tail", tmp_path, connection(mosquitto_broker, "unit-deaf"))
    code, stderr, _elapsed = run_consumer(argv, capsys)
    assert code != 0
    assert f"certificate {cert} (CN 'unit-deaf')" in stderr[-1] and "Not authorized" in stderr[-1], stderr


def test_the_control_a_consumer_certificate_listens(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same command line as the failures above, with nothing wrong: it listens, then exits 0.
    argv = consumer_argv("tail", tmp_path, connection(mosquitto_broker, "tail"))
    argv[argv.index("--timeout") + 1] = "1"
    code, stderr, _elapsed = run_consumer(argv, capsys)
    assert code == 0, stderr
    assert stderr == ["listening on entrance/+/events"]


class StderrLines:
    """What a command running in a thread of this process has said on stderr so far (via capsys)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.lines: list[str] = []
        self.out: list[str] = []

    def read(self) -> list[str]:
        captured = self._capsys.readouterr()
        self.lines += captured.err.splitlines()
        self.out += captured.out.splitlines()
        return self.lines

    def said(self, text: str) -> bool:
        return any(text in line for line in self.read())

    def printed(self, text: str) -> bool:
        self.read()
        return any(text in line for line in self.out)


@pytest.mark.slow
def test_a_consumer_that_loses_its_broker_says_so_reconnects_and_receives_again(
    mosquitto_broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = "unit-comeback"
    unit_key = EventKey.load_or_create(tmp_path / "unit.key")
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({unit: unit_key.public_text}))
    argv = ["events", "tail", *connection(mosquitto_broker, "tail"), "--unit", unit, "--keys", str(registry),
            "--count", "2", "--timeout", "45"]  # fmt: skip
    result: list[int] = []
    tail = threading.Thread(target=lambda: result.append(main(argv)))
    stderr = StderrLines(capsys)
    capsys.readouterr()
    tail.start()
    try:
        assert wait_for(lambda: stderr.said(f"listening on entrance/{unit}/events"), 15), stderr.lines
        sender = RawClient(mosquitto_broker, unit)
        sender.publish(
            f"entrance/{unit}/events", json.dumps(signed(unit_key, unit, 1, when=time.time())).encode()
        )
        sender.close()
        assert wait_for(lambda: stderr.printed(f"{unit} #1 recognized"), 10), stderr.out
        mosquitto_broker.stop()
        assert wait_for(lambda: stderr.said("connection lost to localhost:"), 15), stderr.lines
        mosquitto_broker.start()
        again = f"reconnected to localhost:{mosquitto_broker.port}; listening again on entrance/{unit}/events"
        assert wait_for(lambda: stderr.said(again), 20), stderr.lines
        sender = RawClient(mosquitto_broker, unit)
        sender.publish(
            f"entrance/{unit}/events", json.dumps(signed(unit_key, unit, 2, when=time.time())).encode()
        )
        sender.close()
        tail.join(15)
    finally:
        mosquitto_broker.start()
        tail.join(60)
    stderr.read()
    assert result == [0], stderr.lines
    assert [line.split(" ")[2] for line in stderr.out] == ["#1", "#2"], stderr.out
    assert not any(line.startswith("error:") for line in stderr.lines), stderr.lines
