"""Issue 26: Home Assistant shows "Alice", the unit never says it. A real unit (``device run``, real
models, the demo's encrypted gallery whose resident was enrolled with a display name) recognises its
resident with Home Assistant discovery and the opt-in "last seen" on; the attacker holds Home
Assistant's broker identity and records everything it may read of the unit (events, status, health,
every discovery topic). The name is in the unit's gallery, and in none of those bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device import cli
from device.lab.demo import DEMO_NAME, prepare
from device.runtime.service import open_stages

UNIT = "unit-names"


class Attacker:
    """Home Assistant's identity on the broker, subscribed to all it may read of the unit."""

    def __init__(self, broker: Any) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for("home-assistant")
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_message = self._record
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        topics = [
            "homeassistant/#",
            *(f"{broker.prefix}/{UNIT}/{kind}" for kind in ("events", "status", "health")),
        ]
        self.client.subscribe([(topic, 1) for topic in topics])
        assert subscribed.wait(5)

    def _record(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload)))
            self.arrived.notify_all()

    def wait_for_topic(self, topic: str, timeout: float = 20.0) -> bytes:
        with self.arrived:
            found = self.arrived.wait_for(
                lambda: any(t == topic and p for t, p in self.messages), timeout=timeout
            )
            assert found, f"nothing on {topic}; got {sorted({t for t, _ in self.messages})}"
            return next(p for t, p in self.messages if t == topic and p)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_the_unit_publishes_the_resident_id_never_the_name_it_holds(
    tmp_path: Path, mosquitto_broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    mqtt_section = {**mosquitto_broker.mqtt_config(UNIT), "ha_discovery": True, "ha_last_seen": True}
    unit, _stages, _clip, resident = prepare(
        tmp_path,
        open_stages,
        lambda argv: cli.main([*argv, "--unit-id", UNIT]),
        {"mqtt": mqtt_section, "capture": {"realtime": False}, "models": {"cpu_variant": "float"}},
    )
    capsys.readouterr()
    # The name is on the unit (decrypted here for the operator): there is something to leak.
    assert cli.main(["--config", str(unit.config_path), "subjects", "list", "--json"]) == 0
    assert DEMO_NAME in capsys.readouterr().out

    attacker = Attacker(mosquitto_broker)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "device", "--config", str(unit.config_path), "run"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        seen_base = f"homeassistant/sensor/{UNIT}/last_seen_{resident}"
        sensor = json.loads(attacker.wait_for_topic(f"{seen_base}/config"))
        attacker.wait_for_topic(f"{seen_base}/state")
    finally:
        attacker.close()
    events = [json.loads(p) for t, p in attacker.messages if t.endswith(f"/{UNIT}/events")]
    assert any(e["type"] == "recognized" and e["subject"] == resident for e in events), events
    assert sensor["name"] == f"Last seen {resident}"  # the id names the sensor
    leaks = [(topic, payload[:120]) for topic, payload in attacker.messages if DEMO_NAME.encode() in payload]
    assert leaks == []
    first, last = DEMO_NAME.split()
    assert not any(first.encode() in p and last.encode() in p for _t, p in attacker.messages)
