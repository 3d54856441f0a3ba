"""Backups that keep erasures: a backup opens only while this unit's keyring still holds its key.

``device backup OUT`` seals the current gallery file and its gallery key under a fresh random backup key
and records that key in the keyring (``device.identity.keyring``). Every ``forget`` and ``purge-expired``
destroys all backup keys with the old gallery key, so a backup made before an erasure can never be
restored: it cannot bring back anyone who was forgotten since, on this unit or anywhere else (a copy of
the backup file is ciphertext under a key that no longer exists). Make a new backup after each erasure.

File: one JSON header line (format, backup id, unit master key id, generation, subjects, created), then
nonce | AES-256-GCM(backup key, {gallery key, gallery file}, AAD = header). The header holds no name,
consent or template.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.errors import UserError
from device.identity.keyring import Keyring
from device.identity.masterkey import MasterKey

BACKUP_FORMAT = "entrance-camera-gallery-backup"
BACKUP_VERSION = 1
NONCE_BYTES = 12
MAX_BACKUP_BYTES = 64 * 1024 * 1024  # thousands of residents' templates; a gallery of 300 is about 1 MiB


class BackupError(UserError):
    """A backup that cannot be restored here; the message says why."""


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    generation: int
    subjects: int
    created: str


def new_backup_id() -> str:
    return "b-" + secrets.token_hex(8)


def _header(info: BackupInfo, master_key: MasterKey) -> bytes:
    fields = {
        "format": BACKUP_FORMAT,
        "version": BACKUP_VERSION,
        "backup_id": info.backup_id,
        "unit_key_id": master_key.key_id,
        "generation": info.generation,
        "subjects": info.subjects,
        "created": info.created,
    }
    return json.dumps(fields, sort_keys=True).encode() + b"\n"


def seal_backup(
    info: BackupInfo, backup_key: bytes, gallery_key: bytes, gallery_file: bytes, master_key: MasterKey
) -> bytes:
    header = _header(info, master_key)
    body = json.dumps(
        {
            "gallery_key": base64.b64encode(gallery_key).decode(),
            "gallery": base64.b64encode(gallery_file).decode(),
        }
    ).encode()
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(backup_key).encrypt(nonce, body, header)


def open_backup(data: bytes, keyring: Keyring, master_key: MasterKey) -> tuple[BackupInfo, bytes, bytes]:
    """(info, gallery key, gallery file bytes); BackupError when this unit cannot or must not restore it."""
    newline = data.find(b"\n")
    try:
        fields = json.loads(data[:newline]) if newline > 0 else None
        if not isinstance(fields, dict) or fields.get("format") != BACKUP_FORMAT:
            raise ValueError("format")
        info = BackupInfo(
            str(fields["backup_id"]),
            int(fields["generation"]),
            int(fields["subjects"]),
            str(fields["created"]),
        )
        unit_key_id = str(fields["unit_key_id"])
    except (ValueError, KeyError, TypeError):
        raise BackupError("not a gallery backup of this product (bad header)") from None
    if unit_key_id != master_key.key_id:
        raise BackupError(f"backup {info.backup_id} was made on another unit (master key id {unit_key_id})")
    backup_key = keyring.backup_key(info.backup_id)
    if backup_key is None:
        raise BackupError(
            f"backup {info.backup_id} ({info.created}) can no longer be restored: a forget or purge since "
            "destroyed its key, so it cannot bring back an erased subject; make a new backup after erasures"
        )
    header, body = data[: newline + 1], data[newline + 1 :]
    try:
        plain = AESGCM(backup_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header)
        payload = json.loads(plain)
        gallery_key = base64.b64decode(payload["gallery_key"], validate=True)
        gallery_file = base64.b64decode(payload["gallery"], validate=True)
    except InvalidTag:
        raise BackupError(
            f"backup {info.backup_id} failed its integrity check: altered or truncated"
        ) from None
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise BackupError(f"backup {info.backup_id} is malformed ({error})") from None
    return info, gallery_key, gallery_file
