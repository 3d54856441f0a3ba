"""Issue 27, the short version of `make fleet-bench` for `make test`: 5 simulated units (the unit's own
publisher and outbox) at 2 events/s for 15 s through a building Mosquitto bridged to a central one; the
bridge link cut for 3 s, one of three archivers in a share group SIGKILLed (and started again), the
central broker restarted: every committed event is in the archive once, each one signature-verified.
The bench runs the same scenario with 100 units and a 30 s cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet_harness import run_fleet


@pytest.mark.slow
def test_bridged_buildings_lose_and_duplicate_nothing_under_faults(tmp_path: Path) -> None:
    summary = run_fleet(tmp_path, units=5, rate=2.0, duration_s=15.0, cut_s=3.0, settle_s=60.0)
    shown = json.dumps(summary, indent=1)
    assert summary["events_committed"] >= 140, shown  # 5 units x 2/s x 15 s, less start-up jitter
    assert summary["lost"] == 0 and summary["unexpected"] == 0, shown
    assert summary["duplicate_rows"] == 0, shown
    assert summary["rejected"] == 0, shown  # every row passed the archiver's signature check
    assert summary["outboxes_drained"] and summary["archive_complete"], shown
    # The cut held events back in the bridge; the group shared the load.
    assert summary["bridge_backlog_peak"] >= 10 * 2, shown
    assert sum(1 for stored in summary["per_archiver_stored"] if stored > 0) >= 2, shown
    assert summary["ok"], shown
