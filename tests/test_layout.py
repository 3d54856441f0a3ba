"""One place names a unit's files: what ``device init`` makes is where every command looks for it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from gallery_helpers import init_unit

from device.events.signing import EventKey
from device.layout import StateLayout

REPO = Path(__file__).resolve().parents[1]


def test_a_new_unit_has_its_files_where_the_layout_says(tmp_path: Path) -> None:
    layout = StateLayout.from_config(init_unit(tmp_path).config)
    for made_by_init in (layout.master_key, layout.keyring, layout.audit_log, layout.audit_head):
        assert made_by_init.is_file(), made_by_init
    assert layout.state_dir.is_dir()


def test_what_must_outlive_a_restored_state_folder_is_kept_outside_it(tmp_path: Path) -> None:
    layout = StateLayout.from_config(init_unit(tmp_path).config)
    for kept_apart in (layout.keyring, layout.audit_head):
        assert layout.state_dir not in kept_apart.parents, kept_apart
        assert kept_apart.parent == layout.master_key.parent


def event_key(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", "--config", str(config), "events", "key", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_one_folder_of_a_unit_is_called_secrets(tmp_path: Path) -> None:
    unit = init_unit(tmp_path)
    assert event_key(unit.config_path).returncode == 0
    layout = StateLayout.from_config(unit.config)
    assert (
        layout.event_key == layout.state_dir / "signing" / "event-signing.key" and layout.event_key.is_file()
    )
    assert [path for path in unit.dir.rglob("secrets")] == [layout.master_key.parent]
    readme = (REPO / "README.md").read_text()
    assert "default `<unit.state_dir>/signing/event-signing.key`" in readme


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_unit_set_up_with_the_old_folder_name_keeps_its_event_key(tmp_path: Path) -> None:
    unit = init_unit(tmp_path)
    layout = StateLayout.from_config(unit.config)
    old = layout.state_dir / "secrets" / "event-signing.key"  # where units kept it before the rename
    public = EventKey.load_or_create(old).public_text
    first = event_key(unit.config_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["public_key"] == public  # the same key: consumers still know the unit
    assert f"moved the event signing key from {old} to {layout.event_key}" in first.stderr
    assert layout.event_key.is_file() and not old.parent.exists()
    assert stat.S_IMODE(layout.event_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.event_key.parent.stat().st_mode) == 0o700
    again = event_key(unit.config_path)
    assert json.loads(again.stdout)["public_key"] == public and "moved" not in again.stderr


def test_an_old_key_beside_a_new_one_is_named_not_used(tmp_path: Path) -> None:
    unit = init_unit(tmp_path)
    layout = StateLayout.from_config(unit.config)
    current = EventKey.load_or_create(layout.event_key).public_text
    old = layout.state_dir / "secrets" / "event-signing.key"
    EventKey.load_or_create(old)
    result = event_key(unit.config_path)
    assert json.loads(result.stdout)["public_key"] == current
    assert f"{old} is not used: the event signing key is {layout.event_key}" in result.stderr
    assert old.exists()  # left for the operator, never deleted
