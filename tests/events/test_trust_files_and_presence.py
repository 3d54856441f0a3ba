"""Issue 25 point 9: whom the unit trusts is changed only by its owner; retained health tells no one
that someone is at the door.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from command_support import commander_key

from device.events.mqtt_publisher import MqttPublisher, MqttSetupError
from device.events.signing import COMMANDERS, register_key
from tests.events.test_mqtt_publisher import Listener, unit_config, wait_for

NOBODY = 65534


def test_a_commanders_file_others_may_write_is_refused(mosquitto_broker: Any, tmp_path: Path) -> None:
    trusted = tmp_path / "trust" / "commanders.json"
    trusted.parent.mkdir()
    register_key(trusted, "door-1", commander_key().public_text, COMMANDERS)
    # the attack: a local user who can write the file adds a commander of their own
    register_key(trusted, "intruder", commander_key(seed=9).public_text, COMMANDERS)
    for mode in (0o664, 0o646):
        trusted.chmod(mode)
        with pytest.raises(MqttSetupError, match=r"mqtt\.command_keys: .*may change whom the unit trusts"):
            MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-trust", command_keys=str(trusted)))
    trusted.chmod(0o644)
    MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-trust", command_keys=str(trusted))).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_commanders_file_of_another_user_is_refused(mosquitto_broker: Any, tmp_path: Path) -> None:
    trusted = tmp_path / "trust" / "commanders.json"
    trusted.parent.mkdir()
    register_key(trusted, "door-1", commander_key().public_text, COMMANDERS)
    os.chown(trusted, NOBODY, NOBODY)
    with pytest.raises(MqttSetupError, match=r"belongs to user 65534"):
        MqttPublisher(unit_config(mosquitto_broker, tmp_path, "unit-owner", command_keys=str(trusted)))


def retained_health_seen_later(broker: Any, tmp_path: Path, unit: str, **mqtt_extra: Any) -> dict[str, Any]:
    """What a consumer that subscribes after a visit began reads from the retained health."""
    topic = f"entrance/{unit}/health"
    watcher = Listener(broker, [topic])
    publisher = MqttPublisher(unit_config(broker, tmp_path, unit, **mqtt_extra)).start()
    try:
        publisher.publish_health(
            {"fps": 9.5, "active_tracks": 1, "claim_pending": True, "frames_processed": 3}
        )
        assert wait_for(lambda: any("pipeline" in health for health in watcher.payloads(topic)))
        late = Listener(broker, [topic])  # any consumer certificate, at any later time
        try:
            assert wait_for(lambda: any("pipeline" in health for health in late.payloads(topic)))
            return [health for health in late.payloads(topic) if "pipeline" in health][-1]
        finally:
            late.close()
    finally:
        watcher.close()
        publisher.close()


def test_retained_health_leaves_presence_out_by_default(mosquitto_broker: Any, tmp_path: Path) -> None:
    pipeline = retained_health_seen_later(mosquitto_broker, tmp_path, "unit-presence")["pipeline"]
    assert pipeline["fps"] == 9.5 and pipeline["frames_processed"] == 3
    assert "active_tracks" not in pipeline and "claim_pending" not in pipeline


def test_presence_is_published_when_the_config_asks_for_it(mosquitto_broker: Any, tmp_path: Path) -> None:
    health = retained_health_seen_later(mosquitto_broker, tmp_path, "unit-presence-on", health_presence=True)
    assert health["pipeline"]["active_tracks"] == 1 and health["pipeline"]["claim_pending"] is True
