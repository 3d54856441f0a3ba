"""Attacks with the unit's own files: an old gallery copy must stay shut and must never come back.

Each test plays the attacker of issue 14 (findings 1, 2 and 7): copy ``gallery.enc`` before a forget,
then read it with every key the unit still holds, or put it back; delete the gallery or its keyring; and
a crash in the middle of a write must not cost the gallery.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gallery_helpers import Unit, enrol_random, init_unit, run_device

from device.identity import gallery_store as store_module
from device.identity.gallery_file import INDEX_KEY_PURPOSE, WRAP_KEY_PURPOSE, GallerySealer
from device.identity.gallery_records import GalleryUnreadableError
from device.identity.keyring import keyring_path, read_keyring
from device.identity.live_gallery import LiveGallery
from device.identity.masterkey import MasterKey, load_master_key


@pytest.fixture
def unit(tmp_path):  # type: ignore[no-untyped-def]
    return init_unit(tmp_path)


def every_key_the_unit_holds(unit: Unit) -> list[bytes]:
    """What an attacker with today's unit files can derive: master-key purposes and the keyring's keys."""
    master = load_master_key(unit.config.gallery.master_key_path)
    keys = [master.derive(INDEX_KEY_PURPOSE), master.derive(WRAP_KEY_PURPOSE)]
    keyring = read_keyring(keyring_path(unit.config.gallery.master_key_path), master)
    assert keyring is not None
    for slot in (keyring.current, keyring.pending):
        if slot is not None:
            gallery_key = MasterKey(slot.key)
            keys += [slot.key, gallery_key.derive(INDEX_KEY_PURPOSE), gallery_key.derive(WRAP_KEY_PURPOSE)]
    return keys


def try_to_open_index(old_file: bytes, key: bytes) -> bytes | None:
    newline = old_file.index(b"\n")
    header, body = old_file[: newline + 1], old_file[newline + 1 :]
    try:
        return AESGCM(key).decrypt(body[:12], body[12:], header)
    except InvalidTag:
        return None


@pytest.mark.parametrize("erasure", ["forget", "purge-expired"])
def test_a_gallery_copied_before_an_erasure_opens_with_no_key_the_unit_still_holds(
    unit: Unit, erasure: str
) -> None:
    from datetime import date, timedelta

    store = unit.store()
    enrol_random(store, "Keeper Person", seed=31)
    gone, _ = enrol_random(store, "Erased Person", seed=32)
    # Before the erasure the attack works: the copy opens with the unit's keys (the test can tell).
    old_copy = unit.config.gallery.path.read_bytes()
    assert any(try_to_open_index(old_copy, key) is not None for key in every_key_the_unit_holds(unit))

    if erasure == "forget":
        store.forget(gone.subject_id, "tester")
    else:
        later = date.today() + timedelta(days=10_000)
        store.purge_expired("tester", today=later)

    for key in every_key_the_unit_holds(unit):
        assert try_to_open_index(old_copy, key) is None


def copy_from_before_an_erasure(unit: Unit, seed: int) -> bytes:
    """The attacker's copy of gallery.enc, taken while a subject who has since been erased was in it."""
    store = unit.store()
    gone, _ = enrol_random(store, "Erased Person", seed=seed)
    enrol_random(store, "Keeper Person", seed=seed + 1)
    old_copy = unit.config.gallery.path.read_bytes()
    store.forget(gone.subject_id, "tester")
    return old_copy


def test_a_script_with_the_current_master_key_recovers_nothing_from_an_old_copy(unit: Unit) -> None:
    """Exactly the attacker's script: old gallery.enc + today's key files, through the project's own API."""
    old_copy = copy_from_before_an_erasure(unit, seed=33)

    stolen = unit.dir / "stolen.enc"
    stolen.write_bytes(old_copy)
    master = load_master_key(unit.config.gallery.master_key_path)
    keyring = read_keyring(keyring_path(unit.config.gallery.master_key_path), master)
    assert keyring is not None
    for key in (master.material, keyring.current.key):
        with pytest.raises(GalleryUnreadableError, match=r"no longer holds|integrity"):
            GallerySealer(key).open_file(stolen.read_bytes(), str(stolen))


@pytest.mark.slow
def test_an_old_gallery_put_back_is_refused_by_the_store_the_running_unit_and_the_cli(unit: Unit) -> None:
    old_copy = copy_from_before_an_erasure(unit, seed=35)

    unit.config.gallery.path.write_bytes(old_copy)  # the restore

    with pytest.raises(GalleryUnreadableError, match=r"older gallery .* a restored copy"):
        unit.store().load()
    view = LiveGallery.from_config(unit.config)
    assert view.state == "no_gallery"
    assert view.templates()[1] == []
    assert "restored copy" in view.health()["gallery_error"]
    for command in (["subjects", "list"], ["identify", str(unit.dir / "any.jpg")]):
        result = run_device("--config", str(unit.config_path), *command)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "restored copy" in lines[0], result.stderr


def test_an_old_gallery_with_the_same_key_is_refused_too(unit: Unit) -> None:
    """Enrolments do not change the key; the generation record still catches a file from before them."""
    store = unit.store()
    enrol_random(store, "First", seed=37)
    before_second = unit.config.gallery.path.read_bytes()
    enrol_random(store, "Second", seed=38)
    unit.config.gallery.path.write_bytes(before_second)
    with pytest.raises(GalleryUnreadableError, match="older gallery"):
        unit.store().load()


def test_a_deleted_gallery_is_an_alarm_not_an_empty_unit(unit: Unit) -> None:
    enrol_random(unit.store(), "Someone", seed=39)
    unit.config.gallery.path.unlink()

    with pytest.raises(GalleryUnreadableError, match="missing"):
        unit.store().load()
    view = LiveGallery.from_config(unit.config)
    assert view.state == "no_gallery"
    assert "missing" in view.health()["gallery_error"]


def test_a_deleted_keyring_leaves_the_gallery_shut(unit: Unit) -> None:
    enrol_random(unit.store(), "Someone", seed=40)
    keyring_path(unit.config.gallery.master_key_path).unlink()
    with pytest.raises(GalleryUnreadableError, match="no keyring"):
        unit.store().load()
    assert LiveGallery.from_config(unit.config).state == "no_gallery"


def test_a_fresh_unit_is_empty_not_alarmed(unit: Unit) -> None:
    view = LiveGallery.from_config(unit.config)
    assert view.state == "empty"
    assert view.health()["gallery_error"] is None


class SimulatedCrashError(Exception):
    pass


@pytest.mark.parametrize("crash_at", ["before the gallery is written", "before the keyring is final"])
def test_a_crash_in_the_middle_of_a_forget_leaves_a_loadable_gallery(
    unit: Unit, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    store = unit.store()
    keep, _ = enrol_random(store, "Keeper", seed=41)
    gone, _ = enrol_random(store, "Erased", seed=42)
    real_write_keyring = store_module.write_keyring
    real_write = store_module.write_atomically
    keyring_writes = []

    def write_keyring(*args, **kwargs):  # type: ignore[no-untyped-def]
        keyring_writes.append(args)
        if crash_at == "before the keyring is final" and len(keyring_writes) == 2:
            raise SimulatedCrashError()
        return real_write_keyring(*args, **kwargs)

    def write_gallery(*args, **kwargs):  # type: ignore[no-untyped-def]
        if crash_at == "before the gallery is written":
            raise SimulatedCrashError()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(store_module, "write_keyring", write_keyring)
    monkeypatch.setattr(store_module, "write_atomically", write_gallery)
    with pytest.raises(SimulatedCrashError):
        store.forget(gone.subject_id, "tester")
    monkeypatch.undo()

    survivors = {info.subject_id for info in unit.store().subjects()}
    if crash_at == "before the gallery is written":
        assert survivors == {keep.subject_id, gone.subject_id}  # the forget did not happen; say so, run again
    else:
        assert survivors == {keep.subject_id}  # the new gallery was written: it is the one that counts
    assert LiveGallery.from_config(unit.config).state == "ok"
    if gone.subject_id in survivors:
        unit.store().forget(gone.subject_id, "tester")
    assert {info.subject_id for info in unit.store().subjects()} == {keep.subject_id}
