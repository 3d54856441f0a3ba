"""The fast subset of `make reliability` for `make test`: a short broker kill and a few unit kills.

The same scenarios and the same targets as the full run (tests/reliability/run.py), only shorter faults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from reliability_harness import run_all


@pytest.mark.slow
def test_no_event_is_lost_duplicated_or_reordered_and_units_stay_in_their_lane(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    summary = run_all(mosquitto_broker, tmp_path, outage_s=2.0, kills=3, real_kills=2)
    assert summary["sent"] > 20
    real = summary["real_unit_kills"]
    assert real["kills"] == 2 and real["kills_without_a_new_decision"] == 0, real
    assert real["sent"] >= 2 and real["lost"] == 0 and real["duplicates_after_dedup"] == 0, real
    assert summary["lost"] == 0, summary
    assert summary["duplicates_after_dedup"] == 0, summary
    assert summary["out_of_order"] == 0, summary
    assert summary["cross_unit_deliveries"] == 0, summary["cross_unit"]
    assert set(summary["cross_unit"]["reason_codes"].values()) - {"0x87", "0x01,0x01,0x01,0x01"} == set()
    assert summary["auth"]["valid_accepted"] and summary["auth"]["all_refused"], summary["auth"]
    assert summary["lwt"]["offline_within_1_5x_keepalive"], summary["lwt"]
    assert summary["lwt"]["offline_shutdown_after_clean_stop"] and not summary["lwt"]["will_after_clean_stop"]
    assert summary["all_payloads_schema_valid"], summary["invalid_payloads"]
    assert summary["max_payload_bytes"] < 2048
    assert summary["consumer_forgery_delivered"] == 0, summary["trust"]
    assert summary["poison_payloads_survived"], summary["trust"]
    assert summary["trust"]["fresh_claim_applied"] and not summary["stale_claim_applied"], summary["trust"]
    assert not summary["trust"]["replayed_claim_applied"], summary["trust"]
    assert not summary["untrusted_claim_applied"], summary["trust"]
    assert summary["targets_met"]


def test_a_wait_a_later_check_relies_on_fails_the_run_instead_of_passing_it() -> None:
    import pytest
    from reliability_harness import PreconditionError, must

    must(lambda: True, 0.1, 0.01, "already there")
    with pytest.raises(PreconditionError, match="the unit reconnected"):
        must(lambda: False, 0.1, 0.01, "the unit reconnected")
