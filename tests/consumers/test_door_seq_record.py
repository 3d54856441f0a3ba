"""Issue 25 point 9: the door keeps its seq record in its state folder and never starts without it.

The attack: an attacker recorded a genuine ``recognized`` event; the door is restarted from another
folder (its default ``--audit`` used to be relative to the working folder) or its record is lost, so it
remembers no ``seq`` and the replay, younger than ``--max-age``, opens the door once more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from device.cli import main
from device.commands.door import AUDIT_FILE_NAME, default_audit_path
from device.errors import EXIT_USAGE
from device.events.signing import EventKey, registry_text
from tests.consumers.test_door import RELAY_PIN, run_door_cli
from tests.events.test_mqtt_publisher import wait_for
from tests.events.test_poison_payloads import RawClient
from tests.events.test_signed_events import signed

UNIT = "unit-door-record"


@pytest.fixture
def door_argv(mosquitto_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    unit_key = EventKey.load_or_create(tmp_path / "unit.key")
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({UNIT: unit_key.public_text}))
    cert, key = mosquitto_broker.cert_for("backend")
    return ["--unit", UNIT, "--relay-gpio", str(RELAY_PIN), "--keys", str(registry),
            "--host", "localhost", "--port", str(mosquitto_broker.port),
            "--ca", str(mosquitto_broker.ca_file), "--cert", str(cert), "--key", str(key),
            "--timeout", "5"]  # fmt: skip


def test_the_default_record_is_in_the_state_folder_not_the_working_folder() -> None:
    assert default_audit_path({"STATE_DIRECTORY": "/var/lib/door-a:/var/lib/other"}) == Path(
        "/var/lib/door-a", AUDIT_FILE_NAME
    )
    assert default_audit_path({}) == Path("/var/lib/entrance-door", AUDIT_FILE_NAME)


def test_a_door_without_its_seq_record_refuses_to_start(
    tmp_path: Path, door_argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "lost" / AUDIT_FILE_NAME
    assert main(["door", *door_argv, "--audit", str(missing)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "seq record" in err and "--start-fresh" in err and "listening" not in err
    assert not missing.exists()


@pytest.mark.slow
def test_a_replay_after_a_restart_from_another_folder_never_opens(
    mosquitto_broker: Any,
    tmp_path: Path,
    door_argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "door-state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    record = state / AUDIT_FILE_NAME
    unit_key = EventKey.load_or_create(tmp_path / "unit.key")
    recorded = json.dumps(signed(unit_key, UNIT, 7, when=time.time())).encode()
    attacker = RawClient(mosquitto_broker, UNIT)
    said: list[str] = []

    def door_listens() -> bool:
        said.append(capsys.readouterr().err)
        return "door listening on" in "".join(said)

    def actions() -> list[str]:
        return [json.loads(line)["action"] for line in record.read_text().splitlines()]

    try:
        for step, folder in enumerate(["first-cwd", "second-cwd"]):
            (tmp_path / folder).mkdir()
            monkeypatch.chdir(tmp_path / folder)  # started from a different folder each time
            said.clear()
            result: list[int] = []
            door = run_door_cli([*door_argv, *(["--start-fresh"] if step == 0 else [])], result)
            assert wait_for(door_listens, 15)
            attacker.publish(f"entrance/{UNIT}/events", recorded)  # first the event, then its replay
            assert wait_for(lambda n=step: len(actions()) == n + 1, 10)
            door.join(20)
            assert result == [0]
            assert not (tmp_path / folder / AUDIT_FILE_NAME).exists()
    finally:
        attacker.close()
    assert actions() == ["open", "rejected"]
    # --start-fresh is for the first start only: with a record present it is refused, not obeyed
    assert main(["door", *door_argv, "--start-fresh"]) == EXIT_USAGE
    assert "exists" in capsys.readouterr().err and actions() == ["open", "rejected"]
