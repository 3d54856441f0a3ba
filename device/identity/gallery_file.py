"""The gallery file and its cryptography, on their own so they can be reviewed as one piece.

One file holds the whole gallery:

    {"format": "entrance-camera-gallery", "version": 2, "key_id": ..., "generation": n}\\n
    nonce (12 bytes) | AES-256-GCM(index key, index JSON, AAD = the header line)

The index lists each subject's record (``device.identity.gallery_records``) with two opaque blobs: the
subject's own 256-bit data key wrapped under the gallery's wrap key, and the subject's secrets (display
name and templates) sealed under that data key. Index and wrap keys are derived from a random *gallery
key* kept in the keyring file beside the master key (``device.identity.keyring``), itself sealed under
the unit master key.

Reading goes through :func:`open_gallery`, which accepts only the file the keyring says the unit wrote
last (generation and sha256): a missing, older or different file is refused with one clear line, never
read as empty. Writing the next generation, and replacing the gallery key on forget and purge, is the
store's job (``device.identity.gallery_store``). A wrong key, a failed GCM tag or a truncated file all
give a ``GalleryUnreadableError`` that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.atomicio import read_unit_file
from device.identity.audit import AuditAnchor, AuditError, AuditLog
from device.identity.gallery_records import (
    TEMPLATE_DIM,
    ConsentRecord,
    GalleryContents,
    GalleryUnreadableError,
    SealedSubject,
    SubjectInfo,
    SubjectSecrets,
    Templates,
)
from device.identity.keyring import Keyring, KeyringError, fresh_keyring, read_keyring
from device.identity.masterkey import MasterKey

FILE_FORMAT = "entrance-camera-gallery"
FILE_VERSION = 2  # 2: keys from the keyring's gallery key (1: keys derived from the master key)
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
INDEX_KEY_PURPOSE = "entrance-camera gallery index v1"
WRAP_KEY_PURPOSE = "entrance-camera gallery key wrap v1"


class GallerySealer:
    """Encrypts and decrypts gallery files and subject blobs with keys derived from one gallery key."""

    def __init__(self, gallery_key: bytes) -> None:
        key = MasterKey(gallery_key)  # same HKDF derivation, under the gallery key's own material
        self.key_id = key.key_id
        self._index = AESGCM(key.derive(INDEX_KEY_PURPOSE))
        self._wrap = AESGCM(key.derive(WRAP_KEY_PURPOSE))

    def rewrap(self, subject: SealedSubject, target: GallerySealer) -> SealedSubject:
        """The subject's data key unwrapped here and wrapped under ``target``; the sealed blob is kept."""
        aad = _subject_aad(subject.info.subject_id)
        try:
            data_key = _decrypt(self._wrap, subject.wrapped_key, aad)
        except InvalidTag:
            raise GalleryUnreadableError(
                f"subject {subject.info.subject_id}: wrapped key failed its integrity check"
            ) from None
        return replace(subject, wrapped_key=_encrypt(target._wrap, data_key, aad))

    def seal_subject(self, subject_id: str, secrets_: SubjectSecrets) -> tuple[bytes, bytes]:
        data_key = AESGCM.generate_key(bit_length=256)
        aad = _subject_aad(subject_id)
        payload = json.dumps(
            {
                "name": secrets_.name,
                "templates": base64.b64encode(secrets_.templates.astype("<f4").tobytes()).decode(),
                "dim": TEMPLATE_DIM,
            }
        ).encode()
        wrapped = _encrypt(self._wrap, data_key, aad)
        sealed = _encrypt(AESGCM(data_key), payload, aad)
        return wrapped, sealed

    def open_subject(self, subject: SealedSubject) -> SubjectSecrets:
        subject_id = subject.info.subject_id
        aad = _subject_aad(subject_id)
        try:
            data_key = _decrypt(self._wrap, subject.wrapped_key, aad)
            payload = json.loads(_decrypt(AESGCM(data_key), subject.sealed, aad))
            raw = base64.b64decode(payload["templates"], validate=True)
            templates = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(-1, int(payload["dim"]))
            name = payload["name"]
        except (InvalidTag, ValueError, KeyError, TypeError, binascii.Error) as error:
            raise GalleryUnreadableError(
                f"subject {subject_id}: sealed data failed its integrity check"
            ) from error
        return SubjectSecrets(name=None if name is None else str(name), templates=templates)

    def seal_file(self, contents: GalleryContents) -> bytes:
        header = _header_line(self.key_id, contents.generation)
        index = {
            "subjects": [_subject_to_json(subject) for subject in contents.subjects],
            "audit_anchor": None
            if contents.audit_anchor is None
            else {"seq": contents.audit_anchor.seq, "mac": contents.audit_anchor.mac},
        }
        return header + _encrypt(self._index, json.dumps(index, sort_keys=True).encode(), header)

    def open_file(self, data: bytes, source: str) -> GalleryContents:
        newline = data.find(b"\n")
        if newline < 0:
            raise GalleryUnreadableError(f"gallery {source} is truncated or not a gallery file (no header)")
        header_bytes = data[: newline + 1]
        try:
            header = json.loads(header_bytes)
            if header["format"] != FILE_FORMAT:
                raise ValueError("format")
            version, key_id = int(header["version"]), str(header["key_id"])
            generation = int(header["generation"])
        except (ValueError, KeyError, TypeError):
            raise GalleryUnreadableError(f"gallery {source} is not a gallery file (bad header)") from None
        if version != FILE_VERSION:
            raise GalleryUnreadableError(
                f"gallery {source} has format version {version}; expected {FILE_VERSION}"
            )
        if key_id != self.key_id:
            raise GalleryUnreadableError(
                f"gallery {source} was written under a gallery key this unit no longer holds (file key id "
                f"{key_id}): an old copy from before a forget or purge is refused"
            )
        body = data[newline + 1 :]
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise GalleryUnreadableError(f"gallery {source} is truncated ({len(data)} bytes)")
        try:
            index = json.loads(_decrypt(self._index, body, header_bytes))
            subjects = tuple(_subject_from_json(item) for item in index["subjects"])
            anchor_data = index.get("audit_anchor")
            anchor = (
                None if anchor_data is None else AuditAnchor(int(anchor_data["seq"]), str(anchor_data["mac"]))
            )
        except InvalidTag:
            raise GalleryUnreadableError(
                f"gallery {source} failed its integrity check (GCM tag): the file was altered or truncated"
            ) from None
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            raise GalleryUnreadableError(f"gallery {source} has a malformed index ({error})") from None
        digest = hashlib.sha256(data).hexdigest()
        return GalleryContents(generation, subjects, anchor, digest)


def _subject_aad(subject_id: str) -> bytes:
    return b"entrance-camera subject\x00" + subject_id.encode()


def _header_line(key_id: str, generation: int) -> bytes:
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "key_id": key_id, "generation": generation}
    return json.dumps(header, sort_keys=True).encode() + b"\n"


def _encrypt(cipher: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, aad)


def _decrypt(cipher: AESGCM, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag()
    return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _subject_to_json(subject: SealedSubject) -> dict[str, Any]:
    info = subject.info
    return {
        "subject_id": info.subject_id,
        "consent": {
            "reference": info.consent.reference,
            "recorded_at": info.consent.recorded_at,
            "operator": info.consent.operator,
            "purpose_version": info.consent.purpose_version,
        },
        "created": info.created,
        "expires": info.expires.isoformat(),
        "last_seen": None if info.last_seen is None else info.last_seen.isoformat(),
        "template_count": info.template_count,
        "wrapped_key": _b64(subject.wrapped_key),
        "sealed": _b64(subject.sealed),
    }


def _subject_from_json(item: dict[str, Any]) -> SealedSubject:
    consent = item["consent"]
    info = SubjectInfo(
        subject_id=str(item["subject_id"]),
        consent=ConsentRecord(
            reference=str(consent["reference"]),
            recorded_at=str(consent["recorded_at"]),
            operator=str(consent["operator"]),
            purpose_version=str(consent["purpose_version"]),
        ),
        created=str(item["created"]),
        expires=date.fromisoformat(item["expires"]),
        last_seen=None if item["last_seen"] is None else date.fromisoformat(item["last_seen"]),
        template_count=int(item["template_count"]),
    )
    return SealedSubject(
        info=info,
        wrapped_key=base64.b64decode(item["wrapped_key"], validate=True),
        sealed=base64.b64decode(item["sealed"], validate=True),
    )


def checked_keyring(keys: Path, master_key: MasterKey) -> Keyring | None:
    """The keyring (None when there is none yet); a damaged one makes the gallery unreadable."""
    try:
        return read_keyring(keys, master_key)
    except KeyringError as error:
        raise GalleryUnreadableError(str(error)) from None


def refuse_if_older_than_the_audit(
    contents: GalleryContents, audit: AuditLog, where: str, *, keys: Path, master_key: MasterKey
) -> None:
    """A gallery put back together with its keyring (both copied before a forget) passes the keyring's
    check: the audit log, kept apart and headed beside the master key, says it is older. The gallery
    names the audit entry of the change that made it; the log's last change to the enrolled set must be
    that entry, or the gallery is from before it.

    One exception, a power cut: the change was audited and its new key announced in the keyring as
    pending, but the new gallery never landed. The gallery from before it is then the right one (the
    operator reruns the change); a keyring copied before a forget announces no such write."""
    try:
        head_problem = audit.head_problem()
        last_change = audit.last_change_to_the_gallery()
    except AuditError as error:
        raise GalleryUnreadableError(
            f"gallery {where} refused: its audit log cannot be checked ({error})"
        ) from None
    if head_problem is not None:
        raise GalleryUnreadableError(f"gallery {where} refused: the audit log is not whole ({head_problem})")
    if last_change is None:
        return  # no change to the enrolled set on record yet (a new unit, or one from before anchors)
    anchor = contents.audit_anchor
    keyring = checked_keyring(keys, master_key)
    interrupted = (
        keyring is not None
        and keyring.pending is not None
        and contents.generation == keyring.current.generation
        and last_change.details.get("gallery_generation") == keyring.pending.generation
    )
    if interrupted:
        return
    if anchor is None or anchor.seq < last_change.seq:
        made_by = "no recorded change" if anchor is None else f"audit entry seq {anchor.seq}"
        raise GalleryUnreadableError(
            f"gallery {where} refused: it was made by {made_by}, but the audit log's last change to the "
            f"enrolled set is seq {last_change.seq} ({last_change.event}): an older copy put back"
        )
    if anchor.seq == last_change.seq and anchor.mac != last_change.mac:
        raise GalleryUnreadableError(f"gallery {where} refused: its audit anchor does not match the log")


def open_gallery(path: Path, master_key: MasterKey, keys: Path) -> tuple[GalleryContents, GallerySealer]:
    """The gallery file checked against the keyring: its generation and sha256 must be the ones the unit
    wrote last. A missing, older or different file is refused with one clear line, never read as empty.
    """
    keyring = checked_keyring(keys, master_key)
    try:
        data = read_unit_file(path)
    except FileNotFoundError:
        if keyring is not None and keyring.current.generation > 0:
            raise GalleryUnreadableError(
                f"gallery {path} is missing, but this unit wrote generation {keyring.current.generation}: "
                "deleted or lost (restore it with `device restore`, or re-enrol)"
            ) from None
        return GalleryContents(), GallerySealer((keyring or fresh_keyring()).current.key)
    except OSError as error:
        raise GalleryUnreadableError(f"cannot read gallery {path}: {error.strerror}") from None
    if keyring is None:
        raise GalleryUnreadableError(
            f"gallery {path} has no keyring ({keys}): the key that opens it is "
            "gone (a copied or restored file is refused)"
        )
    generation = _header_generation(data)
    slot = keyring.slot_for(-1 if generation is None else generation, hashlib.sha256(data).hexdigest())
    if slot is None:
        expected = keyring.current.generation
        if generation is not None and generation < expected:
            raise GalleryUnreadableError(
                f"gallery {path} refused: an older gallery (generation {generation}; this unit is at "
                f"{expected}): a restored copy"
            )
        # Damaged rather than old: the sealer names what is wrong (header, truncation, GCM tag).
        GallerySealer(keyring.current.key).open_file(data, str(path))
        raise GalleryUnreadableError(
            f"gallery {path} refused: not the gallery this unit wrote last (generation {generation}; "
            f"expected {expected})"
        )
    sealer = GallerySealer(slot.key)
    return sealer.open_file(data, str(path)), sealer


def _header_generation(data: bytes) -> int | None:
    newline = data.find(b"\n")
    try:
        return int(json.loads(data[:newline])["generation"]) if newline > 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def active_templates(
    sealer: GallerySealer, contents: GalleryContents, today: date
) -> tuple[Templates, list[str]]:
    """All templates of subjects whose enrolment has not expired, one row per template."""
    rows: list[Templates] = []
    ids: list[str] = []
    for subject in contents.subjects:
        if subject.info.is_expired(today):
            continue
        opened = sealer.open_subject(subject)
        rows.append(opened.templates)
        ids.extend([subject.info.subject_id] * len(opened.templates))
    if not rows:
        return np.zeros((0, TEMPLATE_DIM), dtype=np.float32), []
    return np.concatenate(rows).astype(np.float32), ids
