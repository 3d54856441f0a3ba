"""Issue 25, point 5: the service user owns the state folder; a root-run CLI must not follow its links.

Found: lock files (``O_CREAT``) and ``audit.jsonl`` (``O_APPEND``) were opened through symbolic links, so
whoever can write the state folder could make an operator's ``sudo device ...`` create or append files
anywhere; ``init --dir`` accepted an existing 0750 folder of another user. Each test plants the link (or
the foreign file) the way that user would, runs the real CLI, and checks nothing outside was touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from gallery_helpers import Unit, init_unit, run_device

from device.layout import StateLayout

OTHER_USER = 54321


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


def assert_refused_in_one_line(result: object, *expected: str) -> None:
    import subprocess

    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0]


def test_a_linked_gallery_lock_file_makes_no_file_elsewhere(unit: Unit, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "created-by-root"
    lock = unit.store().lock_path
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    result = run_device("--config", str(unit.config_path), "purge-expired")
    assert_refused_in_one_line(result, str(lock), "symbolic link")
    assert not target.exists()


def test_a_hard_linked_audit_log_is_not_appended_through(unit: Unit, tmp_path: Path) -> None:
    audit_log = StateLayout.from_config(unit.config).audit_log
    elsewhere = tmp_path / "root-owned-file-elsewhere"  # owned by the same user: only the link count tells
    audit_log.rename(elsewhere)
    os.link(elsewhere, audit_log)
    before = elsewhere.read_bytes()
    result = run_device("--config", str(unit.config_path), "purge-expired")
    assert result.returncode == 2, result.stderr
    assert "hard links" in result.stderr and "Traceback" not in result.stderr
    assert elsewhere.read_bytes() == before


def test_a_linked_audit_log_is_not_appended_through(unit: Unit, tmp_path: Path) -> None:
    audit_log = StateLayout.from_config(unit.config).audit_log
    moved = tmp_path / "outside-audit.jsonl"  # the real log moved away, a link left in its place
    audit_log.rename(moved)
    audit_log.symlink_to(moved)
    before = moved.read_bytes()
    result = run_device("--config", str(unit.config_path), "purge-expired")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "symbolic link" in result.stderr
    assert moved.read_bytes() == before


def test_a_linked_used_command_record_and_outbox_are_refused(unit: Unit, tmp_path: Path) -> None:
    from device.atomicio import UnsafeFileError
    from device.events.command_gate import UsedRequests
    from device.events.outbox import Outbox

    target = tmp_path / "elsewhere.jsonl"
    used = StateLayout.from_config(unit.config).used_commands
    used.parent.mkdir(parents=True, exist_ok=True)
    used.symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        UsedRequests(used).mark("request-1", expires_at=4e9)
    assert not target.exists()

    outbox_path = tmp_path / "state" / "outbox.db"
    outbox_path.parent.mkdir()
    outbox_path.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        Outbox(outbox_path)
    wal = outbox_path.with_name("outbox.db-wal")
    outbox_path.unlink()
    wal.symlink_to(tmp_path / "elsewhere.db-wal")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        Outbox(outbox_path)
    assert not (tmp_path / "elsewhere.db").exists() and not (tmp_path / "elsewhere.db-wal").exists()


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_linked_master_key_is_refused_even_when_it_points_at_a_root_file(
    unit: Unit, tmp_path: Path
) -> None:
    key = unit.config.gallery.master_key_path
    real = tmp_path / "real-master.key"
    key.rename(real)
    key.symlink_to(real)
    result = run_device("--config", str(unit.config_path), "subjects", "list")
    assert result.returncode != 0
    assert "symbolic link" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["keyring", "audit_head"])
@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_linked_keyring_or_audit_head_is_not_read_through(unit: Unit, tmp_path: Path, name: str) -> None:
    planted = getattr(StateLayout.from_config(unit.config), name)
    real = tmp_path / f"moved-{planted.name}"
    planted.rename(real)
    planted.symlink_to(real)  # the same bytes: only the link gives it away
    result = run_device("--config", str(unit.config_path), "subjects", "list")
    assert result.returncode != 0
    assert "symbolic link" in result.stderr and "Traceback" not in result.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")


@needs_root
def test_a_root_run_cli_refuses_a_lock_file_planted_by_another_user(unit: Unit) -> None:
    lock = unit.store().lock_path
    lock.touch()
    os.chown(lock, OTHER_USER, OTHER_USER)  # the state folder stays root's: someone else put it there
    result = run_device("--config", str(unit.config_path), "purge-expired")
    assert_refused_in_one_line(result, str(lock), f"belongs to user {OTHER_USER}")


@needs_root
def test_init_refuses_an_existing_0750_folder_of_another_user(tmp_path: Path) -> None:
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir(mode=0o750)
    unit_dir.chmod(0o750)  # the mode init would set itself: only the owner is wrong
    os.chown(unit_dir, OTHER_USER, OTHER_USER)
    result = run_device("init", "--dir", str(unit_dir))
    assert result.returncode != 0
    assert f"belongs to user {OTHER_USER}" in result.stderr
    assert not (unit_dir / "secrets").exists() and not (unit_dir / "unit.toml").exists()


@needs_root
def test_init_accepts_its_own_existing_folder(tmp_path: Path) -> None:
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir(mode=0o750)
    unit_dir.chmod(0o750)
    result = run_device("init", "--dir", str(unit_dir))
    assert result.returncode == 0, result.stderr


def test_the_unit_publisher_refuses_a_linked_used_command_record(
    mosquitto_broker: Any, tmp_path: Path
) -> None:
    """The running unit (real publisher, real Mosquitto) stops with one clear refusal instead of appending
    the ids of the commands it takes to wherever the link points."""
    from device.atomicio import UnsafeFileError
    from device.events.mqtt_publisher import MqttPublisher
    from tests.events.test_mqtt_publisher import unit_config

    config = unit_config(mosquitto_broker, tmp_path, "unit-linked-record")
    used = StateLayout.from_config(config).used_commands
    used.parent.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "appended-by-the-unit"
    used.symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        MqttPublisher(config)
    assert not target.exists()
