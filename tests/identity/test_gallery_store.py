"""The encrypted gallery: what is stored, how it is sealed, how forget erases, how expiry works."""

from __future__ import annotations

import base64
import json
import stat
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import Unit, enrol_random, init_unit, random_templates, state_file_bytes

from device.identity.audit import AuditLog
from device.identity.gallery_file import INDEX_KEY_PURPOSE
from device.identity.gallery_records import GalleryError, SubjectNotFoundError, utc_now
from device.identity.gallery_store import EnrolRequest, GalleryStore
from device.identity.keyring import keyring_path, read_keyring
from device.identity.masterkey import MasterKey, load_master_key


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


def decrypted_index(unit: Unit) -> bytes:
    """The gallery's index layer in the clear, to check what the outer encryption hides."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    master_key = load_master_key(unit.config.gallery.master_key_path)
    keyring = read_keyring(keyring_path(unit.config.gallery.master_key_path), master_key)
    assert keyring is not None
    index_key = MasterKey(keyring.current.key).derive(INDEX_KEY_PURPOSE)
    data = unit.config.gallery.path.read_bytes()
    newline = data.index(b"\n")
    body = data[newline + 1 :]
    return AESGCM(index_key).decrypt(body[:12], body[12:], data[: newline + 1])


def test_enrolled_subjects_round_trip_through_the_encrypted_file(unit: Unit) -> None:
    alice, alice_templates = enrol_random(unit.store(), "Alice Example", seed=1)
    bob, bob_templates = enrol_random(unit.store(), None, seed=2, count=2)

    reopened = unit.store()
    assert [info.subject_id for info in reopened.subjects()] == [alice.subject_id, bob.subject_id]
    alice_secrets = reopened.open_subject(alice.subject_id)
    assert alice_secrets.name == "Alice Example"
    np.testing.assert_array_equal(alice_secrets.templates, alice_templates)
    assert reopened.open_subject(bob.subject_id).name is None
    templates, ids = reopened.active_templates()
    assert templates.shape == (5, 128)
    assert ids == [alice.subject_id] * 3 + [bob.subject_id] * 2
    np.testing.assert_array_equal(templates[3:], bob_templates)


def test_subject_ids_are_random_and_not_derived_from_the_name(unit: Unit) -> None:
    first, _ = enrol_random(unit.store(), "Same Name", seed=1)
    second, _ = enrol_random(unit.store(), "Same Name", seed=2)
    assert first.subject_id != second.subject_id
    for info in (first, second):
        assert "same" not in info.subject_id.lower()
        assert len(info.subject_id) == 18  # "s-" + 64 random bits in hex


def test_neither_name_nor_templates_appear_in_any_state_file(unit: Unit) -> None:
    _, templates = enrol_random(unit.store(), "Zelda Quux", seed=3)
    raw = b"".join(state_file_bytes(unit.dir).values())
    assert b"Zelda" not in raw
    assert "Zelda".encode("utf-16-le") not in raw
    for row in templates:
        assert row.tobytes()[:16] not in raw
        assert base64.b64encode(row.tobytes())[:24] not in raw


def test_templates_are_capped_at_the_configured_maximum(unit: Unit) -> None:
    info, _ = enrol_random(unit.store(), "Many", seed=4, count=9)
    assert info.template_count == unit.config.gallery.max_templates_per_subject == 5
    assert unit.store().open_subject(info.subject_id).templates.shape == (5, 128)


def test_consent_record_is_required_and_stored(unit: Unit) -> None:
    store = unit.store()
    request = EnrolRequest("No Consent", random_templates(2, 5), " ", "tester", "v1")
    with pytest.raises(GalleryError, match="consent reference"):
        store.enrol(request)
    assert store.subjects() == []

    info, _ = enrol_random(store, "With Consent", seed=6, consent="FORM-2026-017")
    stored = unit.store().subjects()[0]
    assert stored == info
    assert stored.consent.reference == "FORM-2026-017"
    assert stored.consent.operator == "tester"
    assert stored.consent.purpose_version == "v1"
    assert stored.consent.recorded_at.endswith("Z")
    assert stored.created == stored.consent.recorded_at


def test_expiry_defaults_from_config_and_never_exceeds_three_years(unit: Unit) -> None:
    store = unit.store()
    today = utc_now().date()
    info, _ = enrol_random(store, "Default Expiry", seed=7)
    assert info.expires == today + timedelta(days=unit.config.gallery.default_expiry_days)

    def request(expires: date) -> EnrolRequest:
        return EnrolRequest("X", random_templates(1, 8), "FORM", "tester", "v1", expires=expires)

    with pytest.raises(GalleryError, match="3 years"):
        store.enrol(request(today + timedelta(days=3 * 365 + 1)))
    with pytest.raises(GalleryError, match="not in the future"):
        store.enrol(request(today))
    assert store.enrol(request(today + timedelta(days=3 * 365))).expires == today + timedelta(days=1095)


def test_expired_subjects_stop_matching_and_purge_erases_them(unit: Unit) -> None:
    store = unit.store()
    short = store.enrol(
        EnrolRequest(
            "Short",
            random_templates(2, 9),
            "FORM",
            "tester",
            "v1",
            expires=utc_now().date() + timedelta(days=1),
        )
    )
    long, _ = enrol_random(store, "Long", seed=10)
    tomorrow = utc_now().date() + timedelta(days=1)

    _, ids = store.active_templates(today=tomorrow)
    assert set(ids) == {long.subject_id}
    assert store.purge_expired("service", today=tomorrow) == [short.subject_id]
    assert [info.subject_id for info in store.subjects()] == [long.subject_id]
    assert store.purge_expired("service", today=tomorrow) == []
    purges = [entry for entry in store.audit.entries() if entry.event == "purge"]
    assert [(entry.details["subject_id"], entry.actor) for entry in purges] == [(short.subject_id, "service")]


def test_forget_leaves_no_template_name_or_key_in_any_state_file(unit: Unit) -> None:
    store = unit.store()
    keep, _ = enrol_random(store, "Keeper Person", seed=11)
    gone, templates = enrol_random(store, "Forgotten Person", seed=12)
    sealed = store.load().find(gone.subject_id)
    secret_pieces = [
        sealed.wrapped_key,
        sealed.sealed,
        base64.b64encode(sealed.wrapped_key),
        base64.b64encode(sealed.sealed),
    ]
    secret_pieces += [row.tobytes() for row in templates] + [
        base64.b64encode(templates.astype("<f4").tobytes())[:40]
    ]
    # The search can find what it looks for: before forget, the index holds the subject's sealed blobs.
    assert base64.b64encode(sealed.sealed) in decrypted_index(unit)

    store.forget(gone.subject_id, "tester")

    everything = state_file_bytes(unit.dir)
    plaintext_index = decrypted_index(unit)
    for piece in secret_pieces:
        for path, data in everything.items():
            assert piece not in data, f"{path} still holds data of the forgotten subject"
        assert piece not in plaintext_index
    for data in [*everything.values(), plaintext_index]:
        assert b"Forgotten" not in data
    assert gone.subject_id.encode() not in plaintext_index
    assert not [path for path in everything if path.name.endswith(".tmp")]
    assert [info.subject_id for info in store.subjects()] == [keep.subject_id]
    with pytest.raises(SubjectNotFoundError):
        store.open_subject(gone.subject_id)
    with pytest.raises(SubjectNotFoundError):
        store.forget(gone.subject_id, "tester")


def test_a_sealed_blob_moved_to_another_subject_does_not_open(unit: Unit) -> None:
    from dataclasses import replace

    store = unit.store()
    first, _ = enrol_random(store, "First", seed=13)
    second, _ = enrol_random(store, "Second", seed=14)
    contents = store.load()
    a, b = contents.subjects
    swapped = replace(a, sealed=b.sealed, wrapped_key=b.wrapped_key)
    with pytest.raises(GalleryError, match="integrity"):
        store.sealer.open_subject(swapped)
    assert first.subject_id != second.subject_id


def test_files_and_directories_have_private_modes(unit: Unit) -> None:
    enrol_random(unit.store(), "Perms", seed=15)
    config = unit.config

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(unit.dir) == 0o750
    assert mode(config.gallery.master_key_path) == 0o600
    assert mode(config.gallery.master_key_path.parent) == 0o700
    assert mode(config.unit.state_dir) == 0o700
    assert mode(config.gallery.path) == 0o600
    assert mode(config.unit.state_dir / "audit.jsonl") == 0o600
    assert mode(unit.config_path) == 0o640


def test_gallery_changes_are_serialised_between_processes(unit: Unit) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        pool.starmap(_enrol_in_child, [(unit.config_path, seed) for seed in range(100, 108)])
    store = unit.store()
    assert len(store.subjects()) == 8
    assert store.audit.verify(store.load().audit_anchor).ok


def _enrol_in_child(config_path: Path, seed: int) -> None:
    from device.config import load_config

    enrol_random(GalleryStore.from_config(load_config(config_path)), f"child {seed}", seed=seed)


def test_the_index_records_the_latest_audit_entry(unit: Unit) -> None:
    store = unit.store()
    info, _ = enrol_random(store, "Anchored", seed=16)
    anchor = store.load().audit_anchor
    last = store.audit.entries()[-1]
    assert anchor is not None
    assert (anchor.seq, anchor.mac) == (last.seq, last.mac)
    assert last.event == "enrol" and last.details["subject_id"] == info.subject_id
    assert json.loads(decrypted_index(unit))["audit_anchor"]["seq"] == last.seq


def test_store_refuses_malformed_templates(unit: Unit) -> None:
    store = unit.store()
    for bad in (np.zeros((1, 128)), np.full((1, 128), np.nan), np.ones((2, 64))):
        with pytest.raises(GalleryError):
            store.enrol(EnrolRequest("Bad", bad.astype(np.float32), "FORM", "tester", "v1"))
    assert store.subjects() == []
    assert isinstance(store.audit, AuditLog)


def test_the_running_unit_records_the_last_seen_day_of_recognised_subjects_only(unit: Unit) -> None:
    from device.identity.live_gallery import LastSeenRecorder
    from device.types import Decision, DecisionType

    info, _ = enrol_random(unit.store(), "Seen Person", seed=21)
    day = {"today": date(2026, 3, 1)}
    passed_on: list[Decision] = []
    recorder = LastSeenRecorder(unit.config, then=passed_on.append, today=lambda: day["today"])

    def decision(kind: DecisionType, subject: str | None) -> Decision:
        return Decision(kind, subject, 0.95, 0.1, 5, ("above_threshold",), 1)

    generation = unit.store().load().generation
    recorder(decision(DecisionType.UNKNOWN, None))
    assert unit.store().load().generation == generation  # a stranger causes no write at all
    recorder(decision(DecisionType.RECOGNIZED, info.subject_id))
    recorder(decision(DecisionType.RECOGNIZED, info.subject_id))
    contents = unit.store().load()
    assert contents.generation == generation + 1  # once per subject per day
    assert contents.find(info.subject_id).info.last_seen == date(2026, 3, 1)
    day["today"] = date(2026, 3, 2)
    recorder(decision(DecisionType.RECOGNIZED, info.subject_id))
    assert unit.store().load().find(info.subject_id).info.last_seen == date(2026, 3, 2)
    assert len(passed_on) == 4  # the run loop's own hook still sees every decision

    unit.config.gallery.master_key_path.unlink()
    day["today"] = date(2026, 3, 3)
    recorder(decision(DecisionType.RECOGNIZED, info.subject_id))  # logged, never raised
