"""Backups that keep erasures (issue 14, finding 7): a restore never brings a forgotten subject back."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, run_device

from device.identity.gallery_records import GalleryError
from device.identity.live_gallery import LiveGallery


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


def device(unit: Unit, *args: str) -> tuple[int, str, str]:
    result = run_device("--config", str(unit.config_path), *args)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.mark.slow
def test_a_lost_gallery_comes_back_from_its_backup(unit: Unit, tmp_path: Path) -> None:
    first, _ = enrol_random(unit.store(), "First", seed=71)
    second, _ = enrol_random(unit.store(), "Second", seed=72)
    backup = tmp_path / "gallery.backup"
    code, _, err = device(unit, "backup", str(backup))
    assert code == 0, err
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert b"First" not in backup.read_bytes() and b"Second" not in backup.read_bytes()

    unit.config.gallery.path.unlink()  # lost
    assert LiveGallery.from_config(unit.config).state == "no_gallery"
    code, _, err = device(unit, "restore", str(backup))
    assert code == 0, err
    assert {info.subject_id for info in unit.store().subjects()} == {first.subject_id, second.subject_id}
    assert unit.store().open_subject(first.subject_id).name == "First"
    assert LiveGallery.from_config(unit.config).state == "ok"
    events = [entry.event for entry in unit.store().audit.entries()]
    assert "backup" in events and "restore" in events


@pytest.mark.slow
def test_a_backup_made_before_a_forget_can_never_be_restored(unit: Unit, tmp_path: Path) -> None:
    enrol_random(unit.store(), "Keeper", seed=73)
    gone, _ = enrol_random(unit.store(), "Forgotten", seed=74)
    backup = tmp_path / "before-forget.backup"
    assert device(unit, "backup", str(backup))[0] == 0
    unit.store().forget(gone.subject_id, "tester")

    unit.config.gallery.path.unlink()
    code, _, err = device(unit, "restore", str(backup))
    assert code != 0
    assert "a forget or purge since destroyed its key" in err
    with pytest.raises(GalleryError):
        unit.store().load()  # still no gallery: nothing came back


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_restoring_a_tar_of_the_whole_unit_state_after_a_forget_brings_nobody_back(
    unit: Unit, tmp_path: Path
) -> None:
    """The issue's reproduction: a tar of the state folder taken before forget, put back after it."""
    enrol_random(unit.store(), "Keeper", seed=75)
    gone, _ = enrol_random(unit.store(), "Forgotten", seed=76)
    archive = tmp_path / "state.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(unit.config.unit.state_dir, arcname="state")
    unit.store().forget(gone.subject_id, "tester")

    with tarfile.open(archive) as tar:
        tar.extractall(unit.dir, filter="data")
    # The keyring and the audit head live beside the master key, not in the state folder: the old
    # gallery and audit log that came back with the tar are refused and flagged.
    for command in (["subjects", "list"], ["identify", str(tmp_path / "any.jpg")]):
        code, _, err = device(unit, *command)
        assert code != 0 and "restored copy" in err
    assert LiveGallery.from_config(unit.config).state == "no_gallery"
    code, _, err = device(unit, "audit", "verify")
    assert code == 1 and "removed from the end" in err


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_backup_does_not_open_on_another_unit(unit: Unit, tmp_path: Path) -> None:
    enrol_random(unit.store(), "Someone", seed=77)
    backup = tmp_path / "unit-a.backup"
    assert device(unit, "backup", str(backup))[0] == 0
    other = init_unit(tmp_path / "other")
    code, _, err = device(other, "restore", str(backup))
    assert code != 0 and "another unit" in err


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_restore_refuses_to_drop_subjects_enrolled_after_the_backup(unit: Unit, tmp_path: Path) -> None:
    enrol_random(unit.store(), "Early", seed=78)
    backup = tmp_path / "early.backup"
    assert device(unit, "backup", str(backup))[0] == 0
    late, _ = enrol_random(unit.store(), "Late", seed=79)
    code, _, err = device(unit, "restore", str(backup))
    assert code != 0 and late.subject_id in err and "--replace-newer" in err
    assert late.subject_id in {info.subject_id for info in unit.store().subjects()}
