"""What the gallery holds: subject records, their secrets, the file's contents, and the errors the gallery
modules raise.

A subject's record (pseudonymous id, consent, expiry, created and last seen) may be shown without
decrypting anything; its secrets (display name and templates) exist in the clear only in memory, and their
``repr`` keeps them out of logs. Times in the records are RFC 3339 UTC to the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
from numpy.typing import NDArray

from device.errors import UserError
from device.identity.audit import AuditAnchor

TEMPLATE_DIM = 128

Templates = NDArray[np.float32]


class GalleryError(UserError):
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


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
