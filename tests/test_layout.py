"""One place names a unit's files: what ``device init`` makes is where every command looks for it."""

from __future__ import annotations

from pathlib import Path

from gallery_helpers import init_unit

from device.layout import StateLayout


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
