"""Issue 25 point 9: the fleet's unit key registry is merged, and a changed unit key is pinned.

Before, the playbook rebuilt ``unit-keys.json`` from the hosts of the current play: a run with
``--limit unit-a`` dropped every other unit's key (their events refused everywhere), and a unit whose key
had changed (regenerated, or another machine answering as that unit) was taken silently.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from device.events.signing import EventKey, load_registry, registry_text

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "deploy/fleet/site.yml"
REGISTRY_TASK = "- name: The consumers' unit key registry"


def key(tmp_path: Path, name: str) -> str:
    return EventKey.load_or_create(tmp_path / f"{name}.key").public_text


def registry_task() -> str:
    text = PLAYBOOK.read_text()
    start = text.index(REGISTRY_TASK)
    end = text.index("\n    - name:", start)
    return text[start:end]


def playbook_argv(unit: str, public_key: str, build_dir: Path, *, rotate: bool) -> list[str]:
    """The task's argv with the variables a run gives it (the playbook runs from deploy/fleet)."""
    values = {
        "{{ playbook_dir }}": str(PLAYBOOK.parent),
        "{{ fleet_build_dir }}": str(build_dir),
        "{{ unit_id }}": unit,
        "{{ (event_key.stdout | from_json).public_key }}": public_key,
        "{{ '--rotate' if rotate_event_key | bool else '--no-rotate' }}": "--rotate"
        if rotate
        else "--no-rotate",
    }
    argv = []
    for item in re.findall(r"^ {10}- (.+)$", registry_task(), flags=re.MULTILINE):
        item = item.strip('"')
        for placeholder, value in values.items():
            item = item.replace(placeholder, value)
        assert "{{" not in item, f"unhandled template in {item}"
        argv.append(item)
    # the controller's venv entry point; this interpreter runs the same CLI (also in a copy of the tree)
    assert argv[0] == f"{PLAYBOOK.parent}/../../.venv/bin/device"
    return [sys.executable, "-m", "device", *argv[1:]]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_playbook_merges_each_unit_one_at_a_time_instead_of_rebuilding() -> None:
    task = registry_task()
    assert "register-key" in task and "throttle: 1" in task and "run_once" not in task
    assert "'event_key')" not in PLAYBOOK.read_text()  # no registry rebuilt from the play's hosts


@pytest.mark.slow
def test_a_limited_run_keeps_the_other_units_and_a_changed_key_needs_rotate(tmp_path: Path) -> None:
    registry = tmp_path / "unit-keys.json"
    registry.write_text(registry_text({"unit-a": key(tmp_path, "a"), "unit-b": key(tmp_path, "b")}))
    before = registry.read_text()

    # ansible-playbook site.yml --limit unit-a: the same key again
    again = run(playbook_argv("unit-a", key(tmp_path, "a"), tmp_path, rotate=False))
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stderr
    assert registry.read_text() == before

    # unit-a answers with another key (a swapped card, or a regenerated key nobody announced)
    swapped = run(playbook_argv("unit-a", key(tmp_path, "a-swapped"), tmp_path, rotate=False))
    assert swapped.returncode != 0 and "--rotate" in swapped.stderr
    assert registry.read_text() == before

    # the operator regenerated it on purpose: -e rotate_event_key=true --limit unit-a
    rotated = run(playbook_argv("unit-a", key(tmp_path, "a-swapped"), tmp_path, rotate=True))
    assert rotated.returncode == 0 and rotated.stdout.startswith("rotated"), rotated.stderr
    keys = json.loads(registry.read_text())["units"]
    assert keys == {"unit-a": key(tmp_path, "a-swapped"), "unit-b": key(tmp_path, "b")}

    # a new unit joins with a limited run: added, the others kept
    added = run(playbook_argv("unit-c", key(tmp_path, "c"), tmp_path, rotate=False))
    assert added.returncode == 0 and added.stdout.startswith("registered")
    assert set(load_registry(registry)) == {"unit-a", "unit-b", "unit-c"}


@pytest.mark.parametrize(
    ("unit", "public_key", "why"),
    [("unit-a", "not-a-key", "not an Ed25519 public key"), ("Unit A\n", None, "not a unit id")],
)
def test_register_key_refuses_what_is_not_a_unit_key(
    tmp_path: Path, unit: str, public_key: str | None, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from device.cli import main

    registry = tmp_path / "unit-keys.json"
    given = public_key or key(tmp_path, "a")
    assert (
        main(["events", "register-key", "--keys", str(registry), "--unit", unit, "--public-key", given]) == 1
    )
    assert why in capsys.readouterr().err and not registry.exists()
