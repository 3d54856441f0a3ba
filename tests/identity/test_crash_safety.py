"""A power cut in the middle of any gallery write leaves a gallery the unit can load: the one from before
the operation or the one after it, never a mix and never a lost gallery (README: "at each step").

Every write is three steps (keyring with the new key pending, gallery file, keyring final; see
identity/keyring.py). The crash is played at the two points between them for each operation that
writes: enrol, purge-expired and restore (forget: tests/identity/test_gallery_rollback.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, random_templates

from device.identity import gallery_store as store_module
from device.identity.gallery_store import EnrolRequest, GalleryStore
from device.identity.live_gallery import LiveGallery

SHORT_STAY = date.today() + timedelta(days=1)  # expired for a purge that runs "the day after"


class PowerCutError(Exception):
    pass


@dataclass
class Operation:
    """Sets up a gallery, then changes it; ``run`` is the change (the one the crash interrupts)."""

    prepare: Callable[[GalleryStore, Path], None]
    run: Callable[[GalleryStore, Path], object]


def enrol_two(store: GalleryStore, _work: Path) -> None:
    enrol_random(store, "Keeper", seed=51, consent="FORM-KEEPER")
    store.enrol(
        EnrolRequest(
            "Short Stay", random_templates(3, 52), "FORM-SHORT-STAY", "tester", "v1", expires=SHORT_STAY
        )
    )


def enrol_one_more(store: GalleryStore, _work: Path) -> object:
    return enrol_random(store, "Newcomer", seed=53, consent="FORM-NEWCOMER")


def purge(store: GalleryStore, _work: Path) -> object:
    return store.purge_expired("tester", today=SHORT_STAY + timedelta(days=1))


def backup_then_enrol(store: GalleryStore, work: Path) -> None:
    enrol_two(store, work)
    store.backup(work / "before.backup", "tester")
    enrol_random(store, "After The Backup", seed=54, consent="FORM-AFTER-BACKUP")


def restore(store: GalleryStore, work: Path) -> object:
    return store.restore(work / "before.backup", "tester", replace_newer=True)


OPERATIONS = {
    "enrol": Operation(enrol_two, enrol_one_more),
    "purge-expired": Operation(enrol_two, purge),
    "restore": Operation(backup_then_enrol, restore),
}
CRASH_POINTS = ("before the gallery is written", "before the keyring is final")


def names(unit: Unit) -> list[str]:
    """Who is enrolled, told apart by the consent record each was enrolled under (names are sealed)."""
    return sorted(info.consent.reference for info in unit.store().subjects())


def run_with_power_cut(monkeypatch: pytest.MonkeyPatch, crash_at: str, change: Callable[[], object]) -> None:
    real_keyring, real_write = store_module.write_keyring, store_module.write_atomically
    keyring_writes: list[Any] = []

    def write_keyring(*args: Any, **kwargs: Any) -> None:
        keyring_writes.append(args)
        if crash_at == "before the keyring is final" and len(keyring_writes) == 2:
            raise PowerCutError()
        real_keyring(*args, **kwargs)

    def write_gallery(*args: Any, **kwargs: Any) -> None:
        if crash_at == "before the gallery is written":
            raise PowerCutError()
        real_write(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(store_module, "write_keyring", write_keyring)
        patched.setattr(store_module, "write_atomically", write_gallery)
        with pytest.raises(PowerCutError):
            change()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_power_cut_leaves_the_gallery_from_before_or_after_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str, crash_at: str
) -> None:
    steps = OPERATIONS[operation]
    # What the operation gives without a crash, on a twin unit.
    twin = init_unit(tmp_path / "twin")
    steps.prepare(twin.store(), tmp_path / "twin")
    before_twin = names(twin)
    steps.run(twin.store(), tmp_path / "twin")
    after = names(twin)
    assert after != before_twin, "the operation must change the gallery for this test to mean anything"

    unit = init_unit(tmp_path / "unit")
    steps.prepare(unit.store(), tmp_path / "unit")
    before = names(unit)
    run_with_power_cut(monkeypatch, crash_at, lambda: steps.run(unit.store(), tmp_path / "unit"))

    assert LiveGallery.from_config(unit.config).state == "ok"  # the unit starts with a gallery
    survived = names(unit)
    if crash_at == "before the gallery is written":
        assert survived == before  # nothing happened; the operator sees the error and runs it again
        steps.run(unit.store(), tmp_path / "unit")
    else:
        assert survived == after  # the new gallery was on disk: the pending keyring vouches for it
    assert names(unit) == after
    assert LiveGallery.from_config(unit.config).state == "ok"
