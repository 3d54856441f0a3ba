"""The enrolled set: encrypted on the unit, consent required, expiring, and forgettable for good.

One file holds the whole gallery; every change rewrites it atomically (temp file, fsync, rename), so no
database journal, WAL or free page can keep an old copy of a template or a name inside the state
directory. The file is:

    {"format": "entrance-camera-gallery", "version": 1, "key_id": ..., "generation": n}\\n
    nonce (12 bytes) | AES-256-GCM(index key, index JSON, AAD = the header line)

The index lists each subject's metadata (pseudonymous id, consent record, expiry, created/last seen)
with two opaque blobs: the subject's own 256-bit data key wrapped under the gallery's wrap key, and the
subject's secrets (display name and templates) sealed under that data key. Index and wrap keys are
derived from a random *gallery key* kept in the keyring file beside the gallery
(``device.identity.keyring``), itself sealed under the unit master key.

Forget (and purge) removes the subject's wrapped key and sealed blob, replaces the gallery key and
re-wraps every remaining subject key under the new one (crypto-erase): an earlier copy of the gallery
file opens with no key the unit still holds. The keyring records the generation and sha256 of the last
gallery file written, so an older file put back is refused at every load (rollback). What this cannot
promise: the flash translation layer of an SD card may keep old physical blocks of replaced files.

Nothing here raises on bad content without saying what is wrong: a wrong key, a failed GCM tag or a
truncated file all give a ``GalleryUnreadableError`` with a clear message, and ``LiveGallery`` (the running
unit's view) turns that into a "no gallery" state reported in health instead of a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import NDArray

from device.atomicio import ensure_private_directory, exclusive_lock, write_atomically
from device.config import MAX_ENROLMENT_DAYS, UnitConfig
from device.identity.audit import AuditAnchor, AuditLog, Scalar, record_config_change
from device.identity.keyring import (
    GallerySlot,
    Keyring,
    KeyringError,
    fresh_keyring,
    keyring_path,
    new_gallery_key,
    read_keyring,
    write_keyring,
)
from device.identity.masterkey import MasterKey, MasterKeyError, load_master_key
from device.types import Decision, DecisionType

log = logging.getLogger(__name__)

TEMPLATE_DIM = 128
FILE_FORMAT = "entrance-camera-gallery"
FILE_VERSION = 2  # 2: keys from the keyring's gallery key (1: keys derived from the master key)
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
INDEX_KEY_PURPOSE = "entrance-camera gallery index v1"
WRAP_KEY_PURPOSE = "entrance-camera gallery key wrap v1"
SUBJECT_ID_PREFIX = "s-"

Templates = NDArray[np.float32]


class GalleryError(Exception):
    """A gallery operation that cannot be done; the message says why."""


class GalleryUnreadableError(GalleryError):
    """The gallery file exists but cannot be trusted: wrong key, altered, truncated or malformed."""


class SubjectNotFoundError(GalleryError):
    pass


@dataclass(frozen=True)
class ConsentRecord:
    reference: str  # the signed form's reference (paper or document system), never its content
    recorded_at: str  # RFC 3339 UTC
    operator: str
    purpose_version: str  # which version of the purpose text the person agreed to


@dataclass(frozen=True)
class SubjectInfo:
    """What may be shown about a subject without decrypting anything biometric."""

    subject_id: str
    consent: ConsentRecord
    created: str
    expires: date
    last_seen: date | None
    template_count: int

    def is_expired(self, today: date) -> bool:
        return today >= self.expires


@dataclass(frozen=True, repr=False)
class SubjectSecrets:
    name: str | None
    templates: Templates  # (k, 128) float32, rows L2-normalised

    def __repr__(self) -> str:  # keep names and templates out of logs and tracebacks
        return f"SubjectSecrets(templates={len(self.templates)})"


@dataclass(frozen=True)
class SealedSubject:
    info: SubjectInfo
    wrapped_key: bytes  # nonce | AES-GCM(wrap key, data key, AAD = subject id)
    sealed: bytes  # nonce | AES-GCM(data key, secrets JSON, AAD = subject id)


@dataclass(frozen=True)
class GalleryContents:
    generation: int = 0
    subjects: tuple[SealedSubject, ...] = ()
    audit_anchor: AuditAnchor | None = None
    digest: str = ""  # sha256 of the file bytes; "" when there is no file yet

    @property
    def version(self) -> str:
        return f"{self.generation}-{self.digest[:12]}" if self.digest else "0-empty"

    def find(self, subject_id: str) -> SealedSubject:
        for subject in self.subjects:
            if subject.info.subject_id == subject_id:
                return subject
        raise SubjectNotFoundError(f"no enrolled subject {subject_id!r}")


def new_subject_id() -> str:
    """Random and pseudonymous: nothing about the person can be derived from it."""
    return SUBJECT_ID_PREFIX + secrets.token_hex(8)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def latest_allowed_expiry(created: date) -> date:
    return created + timedelta(days=MAX_ENROLMENT_DAYS)


def check_expiry(expires: date, today: date) -> None:
    if expires <= today:
        raise GalleryError(f"expiry {expires} is not in the future")
    limit = latest_allowed_expiry(today)
    if expires > limit:
        raise GalleryError(
            f"expiry {expires} is more than {MAX_ENROLMENT_DAYS} days (3 years) away; latest allowed {limit}"
        )


def normalise_templates(templates: NDArray[Any]) -> Templates:
    array = np.asarray(templates, dtype=np.float32)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[1] != TEMPLATE_DIM or len(array) == 0:
        raise GalleryError(f"templates must have shape (k, {TEMPLATE_DIM}), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise GalleryError("templates contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise GalleryError("a template is all zeros")
    # Rows that are already unit length are kept bit-for-bit (normalising twice changes the last bits).
    scale = np.where(np.abs(norms - 1.0) < 1e-5, 1.0, norms)
    normalised: Templates = (array / scale).astype(np.float32)
    return normalised


# --- the sealed container -------------------------------------------------------------------------


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


# --- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolRequest:
    name: str | None
    templates: Templates
    consent_reference: str
    operator: str
    purpose_version: str
    expires: date | None = None  # None: today + the configured default
    forced: bool = False
    images_used: int = 0
    images_rejected: int = 0


class GalleryStore:
    """Read-modify-write access for commands; every change is audited and written atomically."""

    def __init__(
        self,
        path: Path,
        master_key: MasterKey,
        audit: AuditLog,
        *,
        default_expiry_days: int = 365,
        max_templates: int = 5,
        today: Callable[[], date] = lambda: utc_now().date(),
        config_digest: str | None = None,
    ) -> None:
        self.path = path
        self.config_digest = config_digest
        self._master_key = master_key
        self.sealer = GallerySealer(new_gallery_key())  # replaced by the keyring's key at every load
        self.audit = audit
        self.default_expiry_days = default_expiry_days
        self.max_templates = max_templates
        self._today = today

    @classmethod
    def from_config(cls, config: UnitConfig) -> GalleryStore:
        """Opens the store named by the config; raises GalleryError with a clear message."""
        try:
            master_key = load_master_key(config.gallery.master_key_path)
        except MasterKeyError as error:
            raise GalleryError(str(error)) from None
        audit = AuditLog(audit_log_path(config), master_key)
        return cls(
            config.gallery.path,
            master_key,
            audit,
            default_expiry_days=config.gallery.default_expiry_days,
            max_templates=config.gallery.max_templates_per_subject,
            config_digest=config_digest(config),
        )

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def keyring_path(self) -> Path:
        return keyring_path(self.path)

    def load(self) -> GalleryContents:
        """The gallery the keyring vouches for; raises GalleryUnreadableError for anything else."""
        contents, self.sealer = open_gallery(self.path, self._master_key)
        return contents

    def _save(
        self, contents: GalleryContents, anchor: AuditAnchor | None, *, rotate_key: bool = False
    ) -> GalleryContents:
        """Writes the next generation: keyring (pending), gallery, keyring (current); see keyring.py.

        ``rotate_key``: a new gallery key, every remaining subject key re-wrapped under it, the old key
        destroyed with the last keyring write (forget and purge).
        """
        ensure_private_directory(self.path.parent)
        keyring = _read_keyring(self.path, self._master_key) or fresh_keyring()
        current = keyring.current
        new_key = new_gallery_key() if rotate_key else current.key
        target = GallerySealer(new_key)
        subjects = contents.subjects
        if rotate_key:
            old = GallerySealer(current.key)
            subjects = tuple(old.rewrap(subject, target) for subject in subjects)
        updated = replace(
            contents, subjects=subjects, generation=contents.generation + 1, audit_anchor=anchor
        )
        data = target.seal_file(updated)
        digest = hashlib.sha256(data).hexdigest()
        pending = GallerySlot(new_key, updated.generation, digest)
        write_keyring(self.keyring_path, Keyring(current, pending), self._master_key)
        write_atomically(self.path, data)
        write_keyring(self.keyring_path, Keyring(pending), self._master_key)
        self.sealer = target
        return replace(updated, digest=digest)

    def _record(self, event: str, actor: str, details: dict[str, Scalar]) -> AuditAnchor:
        if self.config_digest is not None:
            record_config_change(self.audit, self.config_digest, actor)
        entry = self.audit.append(event, actor, details)
        return AuditAnchor(entry.seq, entry.mac)

    def subjects(self) -> list[SubjectInfo]:
        return [subject.info for subject in self.load().subjects]

    def open_subject(self, subject_id: str) -> SubjectSecrets:
        subject = self.load().find(subject_id)  # load first: it sets the sealer of the file it read
        return self.sealer.open_subject(subject)

    def active_templates(self, today: date | None = None) -> tuple[Templates, list[str]]:
        contents = self.load()
        return active_templates(self.sealer, contents, today or self._today())

    def enrol(self, request: EnrolRequest) -> SubjectInfo:
        if not request.consent_reference.strip():
            raise GalleryError("enrolment needs a consent reference (the signed form)")
        templates = normalise_templates(request.templates)[: self.max_templates]
        now = utc_now()
        today = now.date()
        expires = request.expires or today + timedelta(days=self.default_expiry_days)
        check_expiry(expires, today)
        with exclusive_lock(self.lock_path):
            contents = self.load()
            taken = {subject.info.subject_id for subject in contents.subjects}
            subject_id = new_subject_id()
            while subject_id in taken:
                subject_id = new_subject_id()
            info = SubjectInfo(
                subject_id=subject_id,
                consent=ConsentRecord(
                    reference=request.consent_reference.strip(),
                    recorded_at=rfc3339(now),
                    operator=request.operator,
                    purpose_version=request.purpose_version,
                ),
                created=rfc3339(now),
                expires=expires,
                last_seen=None,
                template_count=len(templates),
            )
            wrapped, sealed = self.sealer.seal_subject(subject_id, SubjectSecrets(request.name, templates))
            anchor = self._record(
                "enrol",
                request.operator,
                {
                    "subject_id": subject_id,
                    "consent_ref": info.consent.reference,
                    "purpose_version": request.purpose_version,
                    "expires": expires.isoformat(),
                    "templates": len(templates),
                    "images_used": request.images_used,
                    "images_rejected": request.images_rejected,
                    "forced": request.forced,
                    "gallery_generation": contents.generation + 1,
                },
            )
            subjects = (*contents.subjects, SealedSubject(info, wrapped, sealed))
            self._save(replace(contents, subjects=subjects), anchor)
        log.info("enrolled subject %s with %d templates", subject_id, len(templates))
        return info

    def forget(self, subject_id: str, actor: str, reason: str = "request") -> None:
        """Crypto-erase: the wrapped data key and the sealed blob leave the file; nothing else has them."""
        with exclusive_lock(self.lock_path):
            contents = self.load()
            contents.find(subject_id)
            anchor = self._record(
                "forget",
                actor,
                {"subject_id": subject_id, "reason": reason, "gallery_generation": contents.generation + 1},
            )
            remaining = tuple(s for s in contents.subjects if s.info.subject_id != subject_id)
            self._save(replace(contents, subjects=remaining), anchor, rotate_key=True)
        log.info("forgot subject %s (gallery key replaced)", subject_id)

    def purge_expired(self, actor: str, today: date | None = None) -> list[str]:
        today = today or self._today()
        with exclusive_lock(self.lock_path):
            contents = self.load()
            expired = [s.info.subject_id for s in contents.subjects if s.info.is_expired(today)]
            if not expired:
                return []
            anchor: AuditAnchor | None = None
            for subject_id in expired:
                anchor = self._record(
                    "purge",
                    actor,
                    {
                        "subject_id": subject_id,
                        "reason": "expired",
                        "gallery_generation": contents.generation + 1,
                    },
                )
            remaining = tuple(s for s in contents.subjects if s.info.subject_id not in expired)
            self._save(replace(contents, subjects=remaining), anchor, rotate_key=True)
        log.info("purged %d expired subjects", len(expired))
        return expired

    def record_seen(self, subject_ids: Sequence[str], day: date) -> bool:
        """Updates last-seen (day resolution, to keep writes and movement detail low). No audit entry."""
        with exclusive_lock(self.lock_path):
            contents = self.load()
            wanted = set(subject_ids)
            changed = False
            subjects = []
            for subject in contents.subjects:
                if subject.info.subject_id in wanted and subject.info.last_seen != day:
                    subject = replace(subject, info=replace(subject.info, last_seen=day))
                    changed = True
                subjects.append(subject)
            if changed:
                self._save(replace(contents, subjects=tuple(subjects)), contents.audit_anchor)
        return changed


def _read_keyring(gallery_path: Path, master_key: MasterKey) -> Keyring | None:
    try:
        return read_keyring(keyring_path(gallery_path), master_key)
    except KeyringError as error:
        raise GalleryUnreadableError(str(error)) from None


def initialise_keyring(gallery_path: Path, master_key: MasterKey) -> None:
    """``device init``: generation 0 recorded, so a later missing keyring is an alarm, not a fresh unit."""
    if _read_keyring(gallery_path, master_key) is None:
        ensure_private_directory(gallery_path.parent)
        write_keyring(keyring_path(gallery_path), fresh_keyring(), master_key)


def open_gallery(path: Path, master_key: MasterKey) -> tuple[GalleryContents, GallerySealer]:
    """The gallery file checked against the keyring: its generation and sha256 must be the ones the unit
    wrote last. A missing, older or different file is refused with one clear line, never read as empty.
    """
    keyring = _read_keyring(path, master_key)
    try:
        data = path.read_bytes()
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
            f"gallery {path} has no keyring ({keyring_path(path).name}) beside it: the key that opens it is "
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


def config_digest(config: UnitConfig) -> str:
    """sha256 of the effective config (after defaults), so comments and key order do not count."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


class LastSeenRecorder:
    """The running unit's ``on_decision`` hook: the day each recognised subject was last seen.

    Day resolution keeps movement detail low and costs at most one gallery rewrite per subject per day.
    Only recognised decisions count, so a stranger never causes a write. A failure (key gone, gallery
    damaged) is logged and otherwise ignored: last-seen must never stop the unit.
    """

    def __init__(
        self,
        config: UnitConfig,
        *,
        then: Callable[[Decision], None] | None = None,
        today: Callable[[], date] = lambda: utc_now().date(),
    ) -> None:
        self._config = config
        self._then = then
        self._today = today
        self._noted: dict[str, date] = {}

    def __call__(self, decision: Decision) -> None:
        if decision.type is DecisionType.RECOGNIZED and decision.subject_id is not None:
            self._note(decision.subject_id)
        if self._then is not None:
            self._then(decision)

    def _note(self, subject_id: str) -> None:
        day = self._today()
        if self._noted.get(subject_id) == day:
            return
        self._noted[subject_id] = day
        try:
            GalleryStore.from_config(self._config).record_seen([subject_id], day)
        except (GalleryError, OSError) as error:
            log.warning("last-seen of %s not recorded: %s", subject_id, error)


def audit_log_path(config: UnitConfig) -> Path:
    return config.unit.state_dir / "audit.jsonl"


def claims_directory(config: UnitConfig) -> Path:
    return config.unit.state_dir / "claims"


# --- the running unit's view ----------------------------------------------------------------------


FileStat = tuple[int, int, int, int]
StatKey = tuple[FileStat | None, FileStat | None, FileStat | None]


@dataclass
class _Loaded:
    stat_key: StatKey
    day: date
    version: str
    templates: Templates
    subject_ids: list[str]
    subjects: int
    expired: int
    error: str | None = None


def _file_stat(path: Path) -> FileStat | None:
    try:
        info = path.stat()
    except OSError:
        return None
    # ctime too: a chmod (fixing a key file's mode) changes nothing else
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


class LiveGallery:
    """The pipeline's GalleryView: ``.version`` and ``.templates()``, reloaded when the file changes.

    Never raises for bad content: a missing or unreadable key or gallery leaves it in "no gallery"
    mode (no templates, ``state`` says why), so the unit keeps running and health reports the problem.
    Checking ``.version`` costs two ``stat`` calls; the files are read again only when the gallery or
    the key file changed (enrol, forget, purge from the CLI; a key restored) or the day changed
    (enrolments expire at midnight UTC).
    """

    def __init__(
        self,
        gallery_path: Path,
        master_key_path: Path,
        *,
        today: Callable[[], date] = lambda: utc_now().date(),
    ) -> None:
        self._path = gallery_path
        self._master_key_path = master_key_path
        self._today = today
        self._lock = threading.Lock()
        self._loaded = self._load(self._stat_key())

    @classmethod
    def from_config(cls, config: UnitConfig) -> LiveGallery:
        return cls(config.gallery.path, config.gallery.master_key_path)

    def _stat_key(self) -> StatKey:
        keys = keyring_path(self._path)
        return (_file_stat(self._path), _file_stat(self._master_key_path), _file_stat(keys))

    def _empty(self, stat_key: StatKey, day: date, error: str | None) -> _Loaded:
        version = "none" if error else "0-empty"
        return _Loaded(stat_key, day, version, np.zeros((0, TEMPLATE_DIM), np.float32), [], 0, 0, error)

    def _load(self, stat_key: StatKey) -> _Loaded:
        day = self._today()
        try:
            master_key = load_master_key(self._master_key_path)
        except MasterKeyError as error:
            log.error("no gallery: %s", error)
            return self._empty(stat_key, day, str(error))
        try:
            contents, sealer = open_gallery(self._path, master_key)
            if not contents.digest:
                return self._empty(stat_key, day, None)
            templates, ids = active_templates(sealer, contents, day)
        except GalleryUnreadableError as error:
            log.error("no gallery: %s", error)
            return self._empty(stat_key, day, str(error))
        except OSError as error:
            log.error("no gallery: cannot read %s: %s", self._path, error.strerror)
            return self._empty(stat_key, day, f"cannot read {self._path}: {error.strerror}")
        expired = sum(1 for subject in contents.subjects if subject.info.is_expired(day))
        version = contents.version + (f"-x{expired}" if expired else "")
        log.info("gallery %s loaded: %d subjects, %d templates", version, len(contents.subjects), len(ids))
        return _Loaded(stat_key, day, version, templates, ids, len(contents.subjects) - expired, expired)

    def _refresh(self) -> _Loaded:
        with self._lock:
            stat_key = self._stat_key()
            if stat_key != self._loaded.stat_key or self._loaded.day != self._today():
                self._loaded = self._load(stat_key)
            return self._loaded

    @property
    def version(self) -> str:
        return self._refresh().version

    def templates(self) -> tuple[Templates, list[str]]:
        loaded = self._refresh()
        return loaded.templates, list(loaded.subject_ids)

    @property
    def state(self) -> str:
        """``ok``, ``empty`` or ``no_gallery`` (key or file unusable; ``health()`` says why)."""
        loaded = self._refresh()
        if loaded.error:
            return "no_gallery"
        return "ok" if loaded.subjects else "empty"

    def health(self) -> dict[str, Any]:
        loaded = self._refresh()
        return {
            "gallery_state": self.state,
            "gallery_error": loaded.error,
            "gallery_version": loaded.version,
            "gallery_subjects": loaded.subjects,
            "gallery_expired_pending_purge": loaded.expired,
        }
