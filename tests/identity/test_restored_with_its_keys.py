"""Attacks with the unit's own files, second pass (issue 25, points 2 and 3): an audit log cut or deleted
must not heal itself, and a gallery put back together with its keyring must not bring back someone who
was forgotten. Each attack is played with the unit's real files and its real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, run_device

from device.identity.audit import AuditError
from device.identity.gallery_records import GalleryUnreadableError
from device.identity.live_gallery import LiveGallery
from device.layout import StateLayout


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


def test_a_cut_audit_log_is_not_extended_and_stays_broken(unit: Unit) -> None:
    store = unit.store()
    gone, _ = enrol_random(store, "Erased", seed=61)
    store.forget(gone.subject_id, "tester")
    log = StateLayout.from_config(unit.config).audit_log
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))  # the attacker cuts the forget from the log

    before = log.read_bytes()
    with pytest.raises((AuditError, GalleryUnreadableError), match="removed from the end"):
        enrol_random(unit.store(), "Anyone", seed=62)  # any audited command
    assert log.read_bytes() == before  # nothing appended: the cut is not covered over
    verify = run_device("--config", str(unit.config_path), "audit", "verify")
    assert verify.returncode != 0


def test_a_deleted_audit_log_does_not_start_a_new_valid_chain(unit: Unit) -> None:
    enrol_random(unit.store(), "Someone", seed=63)
    log = StateLayout.from_config(unit.config).audit_log
    log.unlink()
    result = run_device("--config", str(unit.config_path), "forget", "s-0000000000000000", "--yes")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert not log.exists()


def test_gallery_and_keyring_put_back_together_bring_no_forgotten_subject_back(unit: Unit) -> None:
    layout = StateLayout.from_config(unit.config)
    store = unit.store()
    keeper, _ = enrol_random(store, "Keeper", seed=64)
    gone, _ = enrol_random(store, "Erased", seed=65)
    copies = unit.dir / "attacker"
    copies.mkdir()
    shutil.copy2(layout.gallery, copies / "gallery.enc")
    shutil.copy2(layout.keyring, copies / "gallery.keys")
    store.forget(gone.subject_id, "tester")

    shutil.copy2(copies / "gallery.enc", layout.gallery)  # both put back, as they were before the forget
    shutil.copy2(copies / "gallery.keys", layout.keyring)

    with pytest.raises(GalleryUnreadableError, match="older copy put back"):
        unit.store().load()
    view = LiveGallery.from_config(unit.config)
    assert view.state == "no_gallery" and view.templates()[1] == []
    listed = run_device("--config", str(unit.config_path), "subjects", "list")
    assert listed.returncode != 0 and gone.subject_id not in listed.stdout
    assert keeper.subject_id not in listed.stdout  # nothing is shown from the refused copy


def test_appending_to_a_log_whose_tail_was_cut_is_refused_by_the_log_itself(unit: Unit) -> None:
    """Below the gallery: the audit log alone refuses to extend a chain its head does not end."""
    from device.identity.audit import AuditLog
    from device.identity.masterkey import load_master_key

    layout = StateLayout.from_config(unit.config)
    log = AuditLog.of_unit(layout, load_master_key(layout.master_key))
    log.append("config", "tester", {"config_digest": "a" * 16})
    lines = layout.audit_log.read_text().splitlines(keepends=True)
    layout.audit_log.write_text("".join(lines[:-1]))
    with pytest.raises(AuditError, match="removed from the end"):
        log.append("config", "tester", {"config_digest": "b" * 16})
