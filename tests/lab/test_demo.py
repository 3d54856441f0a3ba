"""`make run`: the demo from an empty folder to events a subscriber received over a local TLS broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_recognises_the_resident_not_the_visitor_nor_the_print_and_the_subscriber_gets_all(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "device", "demo", "--fast", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    decided = [line for line in lines if "unit decided" in line]
    received = [line for line in lines if "subscriber received:" in line]
    assert len(decided) == 3 and "RECOGNIZED" in decided[0] and "UNKNOWN" in decided[1]
    assert "PRESENTATION ATTACK" in decided[2]
    assert len(received) == 3
    assert " recognized subject=s-" in received[0]
    assert " unknown subject=- " in received[1]
    assert " presentation_attack subject=- " in received[2]
    assert "demo ok" in lines[-1]
    # The demo's unit is a real one: consent and enrolment are in its audit log.
    audit = (tmp_path / "demo" / "unit" / "state" / "audit.jsonl").read_text()
    assert '"event":"enrol"' in audit.replace(" ", "") and "DEMO-CONSENT-0001" in audit
