"""Issue 27: `device events archive` and `device events history` as an operator runs them: the archiver
sweeps rows past --keep-days when it starts (and then on its interval), stores what a real unit publishes,
refuses what the registry does not vouch for, and history filters what it holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device.cli import main
from device.consumers.archive import DAY_S, Archive
from device.events.mqtt_publisher import MqttPublisher
from device.events.signing import EventKey, registry_text
from device.layout import StateLayout
from device.types import Decision, DecisionType
from tests.consumers.test_archive import visit
from tests.events.test_mqtt_publisher import unit_config, wait_for

DEVICE = str(Path(sys.executable).with_name("device"))


def test_the_archiver_sweeps_on_start_stores_verified_events_and_refuses_unknown_units(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    config = unit_config(mosquitto_broker, tmp_path, "unit-arch")
    key = EventKey.load_or_create(StateLayout.from_config(config).event_key)
    registry = tmp_path / "keys.json"
    registry.write_text(registry_text({"unit-arch": key.public_text}))
    db = tmp_path / "archive.db"
    old = Archive.open(str(db))
    assert old.store(visit(key, "unit-old", 1, "s-anna", age_s=10 * DAY_S))  # stored when it was young
    old.close()
    cert, cert_key = mosquitto_broker.cert_for("backend")
    archiver = subprocess.Popen(
        [
            DEVICE, "events", "archive", "--host", "localhost", "--port", str(mosquitto_broker.port),
            "--ca", str(mosquitto_broker.ca_file), "--cert", str(cert), "--key", str(cert_key),
            "--keys", str(registry), "--db", str(db), "--keep-days", "7", "--share", "archivers",
            "--timeout", "20",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    publisher = MqttPublisher(config).start()
    stranger = MqttPublisher(unit_config(mosquitto_broker, tmp_path / "s", "unit-stranger")).start()
    try:
        assert archiver.stderr is not None
        while "archive listening on $share/archivers/entrance/+/events" not in archiver.stderr.readline():
            assert archiver.poll() is None
        for track in (1, 2, 3):
            publisher.publish_decision(
                Decision(DecisionType.RECOGNIZED, "s-bert", 0.9, 0.2, 5, ("x",), track)
            )
        stranger.publish_decision(Decision(DecisionType.RECOGNIZED, "s-bert", 0.9, 0.2, 5, ("x",), 9))
        reader = Archive.open(str(db))
        assert wait_for(lambda: reader.count() == 3, 15)
        assert [(r.unit, r.seq) for r in reader.history()] == [
            ("unit-arch", 1),
            ("unit-arch", 2),
            ("unit-arch", 3),
        ]
        reader.close()
    finally:
        publisher.close()
        stranger.close()
        archiver.send_signal(2)
        out, err = archiver.communicate(timeout=30)
    counts = json.loads(out.splitlines()[-1])
    assert counts["stored"] == 3 and counts["swept"] == 1, (out, err)  # the 10-day-old row went at start
    assert counts["rejected"] == 1 and "not in the key registry" in err


def test_history_filters_and_prints_tombstones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = EventKey.load_or_create(tmp_path / "unit.key")
    db = tmp_path / "archive.db"
    archive = Archive.open(str(db))
    archive.store(visit(key, "lobby-1", 1, "s-anna", age_s=3 * 3600))
    archive.store(visit(key, "lobby-1", 2, None, age_s=120))
    archive.store(visit(key, "garage", 1, "s-bert", age_s=60))
    archive._run(
        "UPDATE access_log SET subject = NULL, forgotten = 1 WHERE unit = 'garage'"
    )  # as a subject_forgotten does
    archive._db.commit()
    archive.close()
    assert main(["events", "history", "--db", str(db), "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in lines] == [
        ["lobby-1", "#2", "unknown"],
        ["garage", "#1", "recognized"],
    ]
    assert "subject=(forgotten)" in lines[1]
    assert main(["events", "history", "--db", str(db), "--type", "recognized", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["unit"], r["subject"], r["forgotten"]) for r in rows] == [
        ("lobby-1", "s-anna", False),
        ("garage", None, True),
    ]
    assert main(["events", "history", "--db", str(tmp_path / "none.db")]) == 1
    assert "no archive" in capsys.readouterr().err
