"""Issue 25, point 6: an event the broker acknowledged leaves no readable copy on the unit's disk.

Found: with 50 events queued and 49 acknowledged, all 49 stayed readable in ``outbox.db-wal`` for as long
as anything was still pending (the WAL was only checkpointed when the outbox drained). Here a real unit
publisher queues 49 decisions while a real Mosquitto is down, then one event the broker's ACL refuses
(another unit's topic, so it stays queued); the broker comes back, acknowledges the 49, and the raw bytes
of ``outbox.db`` and ``outbox.db-wal`` are searched for each acknowledged event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device.events.mqtt_publisher import MqttPublisher
from device.events.outbox import Outbox, wal_files
from tests.events.test_mqtt_publisher import decision, unit_config, wait_for

STUCK_MARKER = b"event-for-another-unit-that-the-broker-refuses"


def raw_outbox_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (path, *wal_files(path)) if p.exists()}


@pytest.mark.slow  # a broker outage and 50 events, about 5 s
def test_acknowledged_events_are_gone_from_the_db_and_wal_while_one_is_still_queued(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    config = unit_config(mosquitto_broker, tmp_path, "unit-erase")
    publisher = MqttPublisher(config).start()
    try:
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["connected"])
        mosquitto_broker.stop()
        for track in range(49):
            publisher.publish_decision(decision(track))
        # Another writer of the same outbox, as `device forget` is: an event the ACL will refuse.
        other_writer = Outbox(config.mqtt.outbox_path)
        other_writer.append("entrance/unit-someone-else/events", lambda seq: (f"stuck-{seq}", STUCK_MARKER))
        other_writer.close()
        queued = publisher.outbox.pending(limit=100)
        assert len(queued) == 50
        delivered_ids = [entry.event_id.encode() for entry in queued[:49]]
        assert all(
            any(i in data for data in raw_outbox_bytes(config.mqtt.outbox_path).values())
            for i in delivered_ids
        )

        mosquitto_broker.start()
        assert wait_for(lambda: [e.seq for e in publisher.outbox.pending(limit=100)] == [50], 30)
        assert wait_for(lambda: publisher.health_snapshot()["mqtt"]["refused"] >= 1, 15)
        files = raw_outbox_bytes(config.mqtt.outbox_path)
        assert any(STUCK_MARKER in data for data in files.values())  # the queued one is still there
        readable = {name: sum(event_id in data for event_id in delivered_ids) for name, data in files.items()}
        assert all(count == 0 for count in readable.values()), f"acknowledged events on disk: {readable}"
    finally:
        publisher.close()
