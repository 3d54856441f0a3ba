"""``device status`` reads a running unit's retained status and health with a consumer identity (a
real ``device run`` process, real Mosquitto); ``device outbox show|drop`` inspects and clears the queue,
audited."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from gallery_helpers import init_unit

from device.cli import main
from device.events.outbox import Outbox
from device.events.payloads import build_event, encode
from device.lab.demo import toml_text
from device.layout import StateLayout
from device.types import Decision, DecisionType

STARTUP_TIMEOUT_S = 90.0


def unit_on_broker(tmp_path: Path, broker: Any, face_images: dict[str, Path], unit_id: str) -> Path:
    unit = init_unit(tmp_path)
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copy(face_images["biden.jpg"], camera / "0001.jpg")
    data: dict[str, Any] = tomllib.loads(unit.config_path.read_text())
    data["unit"] = {**data["unit"], "id": unit_id}
    data["capture"] = {"backend": "file", "source": str(camera), "loop": True, "fps": 2.0}
    data["models"] = {**data.get("models", {}), "accelerator": "cpu"}
    data["mqtt"] = {**broker.mqtt_config(unit_id), "health_interval_s": 1.0}
    unit.config_path.write_text(toml_text(data))
    return unit.config_path


@pytest.mark.slow
def test_status_shows_a_running_units_health(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = unit_on_broker(tmp_path, mosquitto_broker, face_images, "status-unit")
    cert, key = mosquitto_broker.cert_for("tail")
    status_args = [
        "status",
        "--config",
        str(config),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--timeout",
        "3",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        out = ""
        while time.monotonic() < deadline and process.poll() is None:
            capsys.readouterr()
            code = main(status_args)
            out = capsys.readouterr().out
            if code == 0 and "online" in out and "health at" in out:
                break
            time.sleep(1.0)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert "unit status-unit: online" in out, out
        assert "broker connection: connected" in out and "outbox:" in out and "alarms:" in out
        capsys.readouterr()
        assert main([*status_args, "--json"]) == 0
        payloads = json.loads(capsys.readouterr().out)
        assert payloads["health"]["unit"] == "status-unit" and payloads["status"]["state"] == "online"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    # After a clean stop the retained status says so.
    capsys.readouterr()
    assert main(status_args) == 0
    assert "unit status-unit: offline" in capsys.readouterr().out


def test_status_of_a_unit_that_never_connected_says_so(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = unit_on_broker(tmp_path, mosquitto_broker, face_images, "never-seen")
    cert, key = mosquitto_broker.cert_for("tail")
    code = main(["status", "--config", str(config), "--cert", str(cert), "--key", str(key), "--timeout", "1"])
    assert code == 1
    assert "no status on the broker" in capsys.readouterr().out


def queue_events(config_path: Path, count: int) -> Outbox:
    from device.config import load_config

    config = load_config(config_path)
    outbox = Outbox(config.mqtt.outbox_path)
    for track in range(count):
        decision = Decision(DecisionType.UNKNOWN, None, None, None, 3, ("x",), track)

        def build(seq: int, decision: Decision = decision) -> tuple[str, bytes]:
            event = build_event(decision, seq=seq, unit=config.unit.id, models={}, gallery_version=None)
            return str(event["event_id"]), encode("event", event)

        outbox.append(f"entrance/{config.unit.id}/events", build)
    return outbox


def test_outbox_show_lists_and_drop_deletes_only_the_named_events_and_audits_it(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = unit_on_broker(tmp_path, mosquitto_broker, face_images, "queued-unit")
    queue_events(config, 3).close()
    capsys.readouterr()
    assert main(["outbox", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "#1 " in out and "#3 " in out and "3 queued" in out and "unknown" in out
    assert main(["outbox", "drop", "2", "7", "--operator", "installer", "--config", str(config)]) == 1
    assert "not queued: #7; nothing was dropped" in capsys.readouterr().err
    assert main(["outbox", "drop", "1", "2", "--operator", "installer", "--config", str(config)]) == 0
    assert "dropped 2" in capsys.readouterr().out
    from device.config import load_config

    remaining = Outbox(load_config(config).mqtt.outbox_path)
    assert [entry.seq for entry in remaining.pending()] == [3]
    remaining.close()
    assert main(["audit", "verify", "--config", str(config)]) == 0
    audit_lines = (config.parent / "state" / "audit.jsonl").read_text().splitlines()
    drop = json.loads(audit_lines[-1])
    assert drop["event"] == "outbox_drop" and drop["actor"] == "installer"
    assert drop["details"] == {"count": 2, "reason": "seq 1,2"}
    # The drop moved the unit's one audit head (beside the master key), not a second head of its own
    # in the state folder that a restored state folder would carry back.
    layout = StateLayout.from_config(load_config(config))
    assert json.loads(layout.audit_head.read_text())["seq"] == drop["seq"]
    assert not (config.parent / "state" / "audit.jsonl.head").exists()
    assert main(["status", "--config", str(config)]) == 0
    assert "outbox: 1 queued" in capsys.readouterr().out
