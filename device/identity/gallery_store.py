"""The admin store: enrol, forget, purge, back up and restore, each audited and written atomically.

Every change rewrites the one gallery file (temp file, fsync, rename), so no database journal, WAL or free
page can keep an old copy of a template or a name inside the state directory; the keyring is written
before (pending) and after (current) the file, so a crash between the two leaves a gallery the unit can
still open. The file format and its cryptography are in ``device.identity.gallery_file``.

Forget (and purge) removes the subject's wrapped key and sealed blob, replaces the gallery key and
re-wraps every remaining subject key under the new one (crypto-erase): an earlier copy of the gallery
file opens with no key the unit still holds. The keyring records the generation and sha256 of the last
gallery file written, so an older file put back is refused at every load (rollback). What this cannot
promise: the flash translation layer of an SD card may keep old physical blocks of replaced files.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.atomicio import (
    create_exclusively,
    ensure_private_directory,
    exclusive_lock,
    read_capped,
    write_atomically,
)
from device.config import MAX_ENROLMENT_DAYS, UnitConfig
from device.errors import require_plain
from device.identity.audit import AuditAnchor, AuditLog, Scalar, record_config_change
from device.identity.backup import (
    MAX_BACKUP_BYTES,
    BackupError,
    BackupInfo,
    new_backup_id,
    open_backup,
    seal_backup,
)
from device.identity.gallery_file import (
    GallerySealer,
    active_templates,
    checked_keyring,
    open_gallery,
    refuse_if_older_than_the_audit,
)
from device.identity.gallery_records import (
    TEMPLATE_DIM,
    ConsentRecord,
    GalleryContents,
    GalleryError,
    GalleryUnreadableError,
    SealedSubject,
    SubjectInfo,
    SubjectSecrets,
    Templates,
    rfc3339,
    utc_now,
)
from device.identity.keyring import (
    GallerySlot,
    Keyring,
    fresh_keyring,
    new_gallery_key,
    write_keyring,
)
from device.identity.masterkey import MasterKey, MasterKeyError, load_master_key
from device.layout import StateLayout

log = logging.getLogger(__name__)

SUBJECT_ID_PREFIX = "s-"


def new_subject_id() -> str:
    """Random and pseudonymous: nothing about the person can be derived from it."""
    return SUBJECT_ID_PREFIX + secrets.token_hex(8)


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
        keyring_file: Path | None = None,
    ) -> None:
        self.path = path
        # The keyring lives beside the master key (keyring.keyring_path); a bare store keeps it beside
        # the gallery file.
        self._keyring_file = keyring_file or path.with_name(path.name + ".keys")
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
            master_key = load_master_key(config.gallery.master_key_path, config.gallery.key_source)
        except MasterKeyError as error:
            raise GalleryError(str(error)) from None
        layout = StateLayout.from_config(config)
        audit = AuditLog.of_unit(layout, master_key)
        return cls(
            layout.gallery,
            master_key,
            audit,
            default_expiry_days=config.gallery.default_expiry_days,
            max_templates=config.gallery.max_templates_per_subject,
            config_digest=config_digest(config),
            keyring_file=layout.keyring,
        )

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def keyring_path(self) -> Path:
        return self._keyring_file

    def load(self) -> GalleryContents:
        """The gallery the keyring vouches for; raises GalleryUnreadableError for anything else."""
        contents, self.sealer = open_gallery(self.path, self._master_key, self._keyring_file)
        refuse_if_older_than_the_audit(
            contents, self.audit, str(self.path), keys=self._keyring_file, master_key=self._master_key
        )
        return contents

    def _save(
        self,
        contents: GalleryContents,
        anchor: AuditAnchor | None,
        *,
        rotate_key: bool = False,
        wrapped_under: bytes | None = None,
    ) -> GalleryContents:
        """Writes the next generation: keyring (pending), gallery, keyring (current); see keyring.py.

        ``rotate_key``: a new gallery key, every remaining subject key re-wrapped under it, the old key
        destroyed with the last keyring write (forget and purge). ``wrapped_under``: the gallery key the
        subjects' keys are wrapped under when it is not the current one (a restored backup).
        """
        ensure_private_directory(self.path.parent)
        keyring = checked_keyring(self._keyring_file, self._master_key) or fresh_keyring()
        current = keyring.current
        new_key = new_gallery_key() if rotate_key else current.key
        target = GallerySealer(new_key)
        subjects = contents.subjects
        source_key = wrapped_under or current.key
        if source_key != new_key:
            old = GallerySealer(source_key)
            subjects = tuple(old.rewrap(subject, target) for subject in subjects)
        updated = replace(
            contents, subjects=subjects, generation=contents.generation + 1, audit_anchor=anchor
        )
        data = target.seal_file(updated)
        digest = hashlib.sha256(data).hexdigest()
        pending = GallerySlot(new_key, updated.generation, digest)
        # An erasure destroys every backup key too: no backup from before it can bring anyone back.
        backups = () if rotate_key else keyring.backups
        write_keyring(self.keyring_path, Keyring(current, pending, backups), self._master_key)
        write_atomically(self.path, data)
        write_keyring(self.keyring_path, Keyring(pending, None, backups), self._master_key)
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
        require_plain(request.consent_reference, "the consent reference")
        require_plain(request.operator, "the operator")
        if request.name is not None:
            require_plain(request.name, "the name")
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

    def backup(self, out: Path, actor: str) -> BackupInfo:
        """The gallery sealed under a new backup key that only this unit's keyring holds (see backup.py)."""
        with exclusive_lock(self.lock_path):
            contents = self.load()
            keyring = checked_keyring(self._keyring_file, self._master_key)
            if keyring is None or not contents.digest:
                raise GalleryError("there is no gallery to back up")
            slot = keyring.slot_for(contents.generation, contents.digest)
            assert slot is not None  # load() only returns a file the keyring vouches for
            info = BackupInfo(
                new_backup_id(), contents.generation, len(contents.subjects), rfc3339(utc_now())
            )
            backup_key = new_gallery_key()
            data = seal_backup(info, backup_key, slot.key, self.path.read_bytes(), self._master_key)
            backups = (*keyring.backups, (info.backup_id, backup_key))
            write_keyring(self.keyring_path, replace(keyring, backups=backups), self._master_key)
            try:
                create_exclusively(out, data)
            except FileExistsError:
                raise GalleryError(f"{out} already exists; a backup never overwrites a file") from None
            self._record("backup", actor, {"backup_id": info.backup_id, "count": info.subjects})
        return info

    def restore(self, source: Path, actor: str, *, replace_newer: bool = False) -> list[str]:
        """Puts a backup's subjects back as the next generation; returns the subject ids restored.

        Refused when the backup's key is gone (a forget or purge since: it would bring someone back) and,
        unless ``replace_newer``, when the current gallery holds subjects the backup does not.
        """
        with exclusive_lock(self.lock_path):
            keyring = checked_keyring(self._keyring_file, self._master_key) or fresh_keyring()
            try:
                backup = read_capped(source, MAX_BACKUP_BYTES, "the backup")
                info, gallery_key, gallery_bytes = open_backup(backup, keyring, self._master_key)
            except BackupError as error:
                raise GalleryError(str(error)) from None
            except OSError as error:
                raise GalleryError(f"cannot read {source}: {error.strerror}") from None
            restored = GallerySealer(gallery_key).open_file(gallery_bytes, str(source))
            try:
                present = {subject.info.subject_id for subject in self.load().subjects}
            except GalleryUnreadableError:
                present = set()  # the usual case: the gallery was lost or damaged
            kept = {subject.info.subject_id for subject in restored.subjects}
            newer = sorted(present - kept)
            if newer and not replace_newer:
                raise GalleryError(
                    f"the gallery holds {len(newer)} subject(s) enrolled after this backup "
                    f"({', '.join(newer)}); restoring would remove them (use --replace-newer)"
                )
            anchor = self._record(
                "restore",
                actor,
                {
                    "backup_id": info.backup_id,
                    "count": len(kept),
                    "gallery_generation": keyring.current.generation + 1,
                },
            )
            base = replace(restored, generation=keyring.current.generation)
            self._save(base, anchor, wrapped_under=gallery_key)
        return sorted(kept)

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


def initialise_keyring(keys: Path, master_key: MasterKey) -> None:
    """``device init``: generation 0 recorded, so a later missing keyring is an alarm, not a fresh unit."""
    if checked_keyring(keys, master_key) is None:
        write_keyring(keys, fresh_keyring(), master_key)


def config_digest(config: UnitConfig) -> str:
    """sha256 of the effective config (after defaults), so comments and key order do not count."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()
