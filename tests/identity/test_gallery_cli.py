"""The gallery commands as an operator uses them, and the running unit's live view of the gallery."""

from __future__ import annotations

import json
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, random_templates, run_device

from device.cli import main
from device.identity.claims import ClaimDrop
from device.identity.gallery_records import utc_now
from device.identity.gallery_store import EnrolRequest
from device.identity.live_gallery import LiveGallery
from device.layout import StateLayout


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


@pytest.mark.slow
def test_init_creates_a_private_unit_and_prints_the_config_path_last(tmp_path: Path) -> None:
    result = run_device("init", "--dir", str(tmp_path / "fresh"), "--unit-id", "lobby-1")
    assert result.returncode == 0, result.stderr
    config_path = Path(result.stdout.splitlines()[-1])
    assert config_path == tmp_path / "fresh" / "unit.toml"
    check = run_device("--config", str(config_path), "config", "check")
    assert check.returncode == 0 and "lobby-1" in check.stdout
    key = tmp_path / "fresh" / "secrets" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "fresh" / "state").stat().st_mode) == 0o700
    assert key.read_bytes() not in config_path.read_bytes()
    assert "ecmk1:" not in config_path.read_text()


def test_init_refuses_a_bad_unit_id(tmp_path: Path) -> None:
    result = run_device("init", "--dir", str(tmp_path / "u"), "--unit-id", "Not Valid")
    assert result.returncode == 1
    assert not (tmp_path / "u").exists()


def test_subjects_list_shows_consent_and_expiry_but_never_templates(
    unit: Unit, capsys: pytest.CaptureFixture[str]
) -> None:
    info, templates = enrol_random(unit.store(), "Listed Person", seed=1, consent="FORM-9")
    capsys.readouterr()
    assert main(["--config", str(unit.config_path), "subjects", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (row,) = listing["subjects"]
    assert row["subject_id"] == info.subject_id
    assert row["name"] == "Listed Person"
    assert row["templates"] == 3
    assert row["consent"]["reference"] == "FORM-9"
    assert row["expires"] == info.expires.isoformat() and row["expired"] is False
    assert set(row) == {
        "subject_id",
        "name",
        "created",
        "expires",
        "expired",
        "last_seen",
        "templates",
        "consent",
    }

    assert main(["--config", str(unit.config_path), "subjects", "list"]) == 0
    table = capsys.readouterr().out
    assert info.subject_id in table and "FORM-9 (v1)" in table
    assert f"{templates[0][0]:.4f}" not in table


def test_forget_from_the_cli(unit: Unit, capsys: pytest.CaptureFixture[str]) -> None:
    info, _ = enrol_random(unit.store(), "To Forget", seed=2)
    assert (
        main(["--config", str(unit.config_path), "forget", info.subject_id, "--yes", "--operator", "dpo"])
        == 0
    )
    assert "crypto-erase" in capsys.readouterr().out
    assert unit.store().subjects() == []
    assert main(["--config", str(unit.config_path), "forget", info.subject_id, "--yes"]) == 1
    assert "no enrolled subject" in capsys.readouterr().err
    forget = unit.store().audit.entries()[-1]
    assert (forget.event, forget.actor, forget.details["subject_id"]) == ("forget", "dpo", info.subject_id)


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_forget_off_a_terminal_needs_yes_as_the_readme_says(unit: Unit) -> None:
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert (
        "off a terminal (a script, a cron job, `ssh host device\n  ...` without `-t`) it forgets nothing"
        in readme
    )
    info, _ = enrol_random(unit.store(), "Kept Person", seed=3)
    command = [sys.executable, "-m", "device", "--config", str(unit.config_path), "forget", info.subject_id]
    refused = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "not forgotten: forgetting Kept Person" in refused.stderr and "re-run with --yes" in refused.stderr
    assert [s.subject_id for s in unit.store().subjects()] == [info.subject_id]
    done = subprocess.run([*command, "--yes"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert unit.store().subjects() == []


def test_purge_expired_from_the_cli(unit: Unit, capsys: pytest.CaptureFixture[str]) -> None:
    keep, _ = enrol_random(unit.store(), "Keep", seed=3)
    assert main(["--config", str(unit.config_path), "purge-expired"]) == 0
    assert "purged 0 expired" in capsys.readouterr().out
    assert [info.subject_id for info in unit.store().subjects()] == [keep.subject_id]


def test_the_live_view_picks_up_enrol_and_forget_without_a_restart(unit: Unit) -> None:
    view = LiveGallery.from_config(unit.config)
    assert view.state == "empty"
    empty_version = view.version
    assert view.templates()[0].shape == (0, 128)

    info, _ = enrol_random(unit.store(), "Live", seed=4, count=2)
    after_enrol = view.version
    assert after_enrol != empty_version
    loaded, ids = view.templates()
    assert ids == [info.subject_id] * 2
    assert loaded.shape == (2, 128)
    assert view.state == "ok"
    assert view.version == after_enrol  # stable while nothing changes

    unit.store().forget(info.subject_id, "tester")
    assert view.version not in (after_enrol, empty_version)
    assert view.templates()[1] == []


def test_the_live_view_drops_subjects_when_their_enrolment_expires(unit: Unit) -> None:
    today = utc_now().date()
    store = unit.store()
    store.enrol(
        EnrolRequest("Soon", random_templates(1, 5), "F", "t", "v1", expires=today + timedelta(days=1))
    )
    clock = {"today": today}
    view = LiveGallery(
        unit.config.gallery.path, unit.config.gallery.master_key_path, today=lambda: clock["today"]
    )
    assert len(view.templates()[1]) == 1
    before = view.version
    clock["today"] = today + timedelta(days=1)
    assert view.templates()[1] == []
    assert view.version != before and view.version.endswith("-x1")
    assert view.health()["gallery_expired_pending_purge"] == 1


def test_claim_hands_a_subject_to_the_running_unit_through_the_state_dir(
    unit: Unit, capsys: pytest.CaptureFixture[str]
) -> None:
    info, _ = enrol_random(unit.store(), "Claimer", seed=6)
    assert main(["--config", str(unit.config_path), "claim", info.subject_id]) == 0
    directory = StateLayout.from_config(unit.config).claims
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    drop = ClaimDrop(directory, unit.config.matching.claim_window_s)
    claims = drop.take()
    assert [claim.subject_id for claim in claims] == [info.subject_id]
    assert drop.take() == []  # taken once
    assert list(directory.iterdir()) == []

    assert main(["--config", str(unit.config_path), "claim", "s-0000000000000000"]) == 1
    assert "no enrolled subject" in capsys.readouterr().err
    assert list(directory.iterdir()) == []


def test_stale_and_malformed_claims_are_dropped_unused(tmp_path: Path) -> None:
    now = {"t": time.time()}
    drop = ClaimDrop(tmp_path / "claims", window_s=15.0, clock=lambda: now["t"])
    drop.submit("s-aaaa")
    (tmp_path / "claims" / "0-bad.claim").write_text("{not json")
    now["t"] += 16.0
    drop.submit("s-bbbb")
    assert [claim.subject_id for claim in drop.take()] == ["s-bbbb"]
    assert list((tmp_path / "claims").iterdir()) == []
