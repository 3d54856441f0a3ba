"""The gallery's own key and generation, kept apart from the gallery (``secrets/gallery.keys``).

Why a second file: the gallery file is encrypted under a random *gallery key*, not under a key derived
from the master key. ``forget`` and ``purge-expired`` replace the gallery key and re-wrap every remaining
subject key under the new one, then destroy the old gallery key. A copy of ``gallery.enc`` taken before a
forget therefore opens with no key the unit still holds: the master key alone opens nothing.

The keyring also records the generation and sha256 of the one gallery file the unit wrote last, so a
gallery file put back from the past (an older generation, or any other bytes) is refused at every load
instead of resurrecting forgotten subjects. Missing keyring next to an existing gallery is refused too.

Every gallery write is three atomic steps, so a crash at any point leaves a loadable pair:
1. keyring = {current, pending: the new key/generation/digest}; 2. the new gallery file;
3. keyring = {current: the new slot}. A load accepts the gallery that matches ``current`` or ``pending``.

The keyring file itself is sealed under a key derived from the master key (AES-256-GCM). What it cannot
promise: an attacker who copied *both* files before a forget (a full image of the card) can still open
that old pair with the master key, and flash may keep old blocks of a replaced file; a hardware key
source (TPM) or an encrypted filesystem is the defence there (README, threat model).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.atomicio import read_unit_file, write_atomically
from device.errors import UserError
from device.identity.masterkey import MasterKey
from device.layout import KEYRING_FILE

KEYRING_FORMAT = "entrance-camera-gallery-keyring"
KEYRING_VERSION = 1
KEYRING_PURPOSE = "entrance-camera gallery keyring v1"
GALLERY_KEY_BYTES = 32
NONCE_BYTES = 12


class KeyringError(UserError):
    """The keyring is unreadable, altered or written under another master key."""


@dataclass(frozen=True, repr=False)
class GallerySlot:
    """One gallery key and the gallery file (generation, sha256) written under it."""

    key: bytes
    generation: int
    digest: str  # sha256 hex of the gallery file; "" before the first gallery is written

    def __repr__(self) -> str:  # never print key material
        return f"GallerySlot(generation={self.generation}, digest={self.digest[:12]})"


@dataclass(frozen=True, repr=False)
class Keyring:
    current: GallerySlot
    pending: GallerySlot | None = None
    # backup id -> the key its file is sealed under; all destroyed by every forget and purge, so no
    # backup made before an erasure can be restored (device/identity/backup.py)
    backups: tuple[tuple[str, bytes], ...] = ()

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, pending={self.pending!r}, backups={len(self.backups)})"

    def backup_key(self, backup_id: str) -> bytes | None:
        return next((key for known, key in self.backups if known == backup_id), None)

    def slot_for(self, generation: int, digest: str) -> GallerySlot | None:
        """The slot whose record matches a gallery file, if any (current first)."""
        for slot in (self.current, self.pending):
            if slot is not None and slot.generation == generation and slot.digest == digest:
                return slot
        return None


def new_gallery_key() -> bytes:
    return secrets.token_bytes(GALLERY_KEY_BYTES)


def keyring_path(master_key_path: Path) -> Path:
    """Beside the master key (the unit's secrets folder), not beside the gallery: putting back a copy of
    the state folder from the past brings back no keyring, so the old gallery stays refused."""
    return master_key_path.with_name(KEYRING_FILE)


def fresh_keyring() -> Keyring:
    """A unit that has never written a gallery: generation 0, no file expected."""
    return Keyring(GallerySlot(new_gallery_key(), 0, ""))


def _header(master_key: MasterKey) -> bytes:
    fields = {"format": KEYRING_FORMAT, "version": KEYRING_VERSION, "key_id": master_key.key_id}
    return json.dumps(fields, sort_keys=True).encode() + b"\n"


def _slot_json(slot: GallerySlot | None) -> dict[str, object] | None:
    if slot is None:
        return None
    return {"key": base64.b64encode(slot.key).decode(), "generation": slot.generation, "digest": slot.digest}


def _slot_from_json(item: object) -> GallerySlot | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise ValueError("slot is not an object")
    key = base64.b64decode(str(item["key"]), validate=True)
    generation = int(item["generation"])
    if len(key) != GALLERY_KEY_BYTES or generation < 0:
        raise ValueError("bad slot")
    return GallerySlot(key, generation, str(item["digest"]))


def seal_keyring(keyring: Keyring, master_key: MasterKey) -> bytes:
    header = _header(master_key)
    backups = [{"id": backup_id, "key": base64.b64encode(key).decode()} for backup_id, key in keyring.backups]
    body = json.dumps(
        {"current": _slot_json(keyring.current), "pending": _slot_json(keyring.pending), "backups": backups},
        sort_keys=True,
    ).encode()
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(master_key.derive(KEYRING_PURPOSE)).encrypt(nonce, body, header)


def open_keyring(data: bytes, master_key: MasterKey, source: str) -> Keyring:
    newline = data.find(b"\n")
    header = data[: newline + 1]
    if newline < 0 or header != _header(master_key):
        raise KeyringError(
            f"gallery keyring {source} is not a keyring written under this unit's master key (bad header)"
        )
    body = data[newline + 1 :]
    try:
        plain = AESGCM(master_key.derive(KEYRING_PURPOSE)).decrypt(
            body[:NONCE_BYTES], body[NONCE_BYTES:], header
        )
        fields = json.loads(plain)
        current = _slot_from_json(fields["current"])
        pending = _slot_from_json(fields["pending"])
        backups = tuple(
            (str(item["id"]), base64.b64decode(str(item["key"]), validate=True))
            for item in fields.get("backups", [])
        )
    except InvalidTag:
        raise KeyringError(
            f"gallery keyring {source} failed its integrity check: altered or truncated"
        ) from None
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise KeyringError(f"gallery keyring {source} is malformed ({error})") from None
    if current is None:
        raise KeyringError(f"gallery keyring {source} has no current slot")
    return Keyring(current, pending, backups)


def read_keyring(path: Path, master_key: MasterKey) -> Keyring | None:
    """The keyring, or None when the file does not exist (a unit that never had one)."""
    try:
        data = read_unit_file(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KeyringError(f"cannot read gallery keyring {path}: {error.strerror}") from None
    return open_keyring(data, master_key, str(path))


def write_keyring(path: Path, keyring: Keyring, master_key: MasterKey) -> None:
    write_atomically(path, seal_keyring(keyring, master_key))
