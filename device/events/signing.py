"""Signed events: an Ed25519 key made on the unit, a signature over each event's canonical bytes, and
the consumer's check of signature, unit, freshness and order.

The broker's ACL decides who may *publish* on a topic; it says nothing to a consumer about who wrote a
payload, and a compromised broker or consumer certificate can put anything on any topic. A signature
by a key that never leaves the unit can not be forged by either. The unit's public key reaches
consumers through a registry file (``{"units": {"<unit id>": "<base64url raw public key>"}}``) that the
fleet playbook collects from the units; a consumer trusts exactly the keys in it.

Canonical bytes: the event without ``sig``, as compact JSON with sorted keys and ASCII escapes — the
same form ``payloads.encode`` publishes, so unit and consumer agree byte for byte.

Signed commands, the other way round: whoever may command a unit (its door controller, a keypad, an
operator) has its own Ed25519 key; the unit's ``mqtt.command_keys`` file
(``{"commanders": {"<name>": "<base64url raw public key>"}}``) lists the commanders it trusts, and a
command counts only when its ``commander`` is listed there and ``sig`` verifies over the same canonical
bytes. The broker ACL alone cannot give this: any certificate allowed to write a unit's ``cmd`` topics
(and the broker itself) could otherwise command it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device.atomicio import InputFileError, parse_json, read_capped, read_unit_file, write_atomically
from device.events.payloads import (
    MAX_COMMAND_LIFETIME_S,
    PayloadError,
    decode,
    encode,
    utc_timestamp,
)
from device.layout import StateLayout, move_legacy_event_key

log = logging.getLogger(__name__)

SIGNATURE_FIELD = "sig"
# An event older than this is refused as stale: long enough for an outbox replay after a short outage,
# short enough that a recorded event cannot be replayed to a freshly started consumer much later.
DEFAULT_MAX_AGE_S = 24 * 3600.0
# A unit clock ahead of the consumer's by more than this is suspect (NTP keeps them within a second).
MAX_CLOCK_SKEW_S = 120.0


class SignatureError(PayloadError):
    """An event that is not from the unit it names, or not now: unsigned, forged, replayed, stale."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_bytes(event: Mapping[str, Any]) -> bytes:
    unsigned = {key: value for key, value in event.items() if key != SIGNATURE_FIELD}
    return json.dumps(unsigned, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")


def signed_by(key: Ed25519PublicKey, signature: str, payload: Mapping[str, Any]) -> bool:
    """Whether ``signature`` (base64) is ``key``'s over the payload's canonical bytes; a signature that is
    not even base64 or of the wrong length is simply not a valid one."""
    try:
        key.verify(_unb64(signature), canonical_bytes(payload))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


@dataclass(frozen=True)
class EventKey:
    """An Ed25519 signing key (the unit's event key, or a commander's key). ``load_or_create`` makes it
    once (0600) and reads it after that; ``label`` names it in errors."""

    private: Ed25519PrivateKey

    @classmethod
    def load_or_create(cls, path: Path, label: str = "event signing key") -> EventKey:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            raw = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            try:
                # O_EXCL: two processes starting at once cannot each write a key and sign with different ones.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(_b64(raw) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                log.info("made the %s %s", label, path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PayloadError(f"{label} {path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            raw = _unb64(read_unit_file(path).decode("ascii").strip())
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        except (ValueError, binascii.Error) as error:
            raise PayloadError(f"{label} {path} is not a key: {error}") from None

    @property
    def public_text(self) -> str:
        """The raw public key, base64url: what goes into the consumers' registry."""
        return _b64(
            self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def sign(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return {**event, SIGNATURE_FIELD: _b64(self.private.sign(canonical_bytes(event)))}


UNITS = "units"  # the consumers' registry of unit event keys
COMMANDERS = "commanders"  # a unit's trusted commanders (mqtt.command_keys)
MAX_KEY_REGISTRY_BYTES = 4 * 1024 * 1024  # ~60 bytes a unit: tens of thousands of units
KEY_FILE_NAMES = {UNITS: "unit key registry", COMMANDERS: "trusted commanders file"}


def unit_event_key(layout: StateLayout) -> EventKey:
    """The unit's own event signing key (made on first use), moved first from where a unit set up
    before the key folder's rename kept it."""
    move_legacy_event_key(layout)
    return EventKey.load_or_create(layout.event_key)


def load_registry(path: Path, section: str = UNITS) -> dict[str, Ed25519PublicKey]:
    """The public keys by name (unit id or commander); ``PayloadError`` when the file is unusable."""
    keys = {}
    for name, text in read_key_file(path, section).items():
        try:
            keys[name] = Ed25519PublicKey.from_public_bytes(_unb64(text))
        except (ValueError, binascii.Error):
            raise PayloadError(
                f"{KEY_FILE_NAMES[section]} {path}: the key of {name!r} is not a base64url Ed25519 public key"
            ) from None
    return keys


def read_key_file(path: Path, section: str) -> dict[str, str]:
    """The names and key texts of a key file, or one line saying what is wrong with it (an empty `{}`
    is a file without its section, not a ``KeyError``)."""
    what = KEY_FILE_NAMES[section]
    expected = f'expected {{"{section}": {{"<name>": "<base64url public key>", ...}}}}'
    try:
        data = parse_json(read_capped(path, MAX_KEY_REGISTRY_BYTES, what), str(path))
    except OSError as error:
        raise PayloadError(f"{what} {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise PayloadError(f"{what} {path}: not JSON ({error}); {expected}") from None
    entries = data.get(section) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise PayloadError(f'{what} {path}: no "{section}" object in it; {expected}')
    if not all(isinstance(key, str) for key in entries.values()):
        raise PayloadError(f"{what} {path}: every key must be a string; {expected}")
    return {str(name): key for name, key in entries.items()}


def check_trust_file(path: Path, what: str) -> None:
    """A file that says whom to trust may be read by anyone (public keys) but changed only by its owner,
    who must be this user or root: anyone else who can write it can make themselves a trusted commander.
    ``PayloadError`` when that does not hold."""
    try:
        info = path.stat()
    except OSError as error:
        raise PayloadError(f"{what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PayloadError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise PayloadError(
            f"{what} {path} has mode {mode:04o}: group/others may change whom the unit trusts; "
            f"refusing it (chmod 644 {path})"
        )
    if info.st_uid not in {os.geteuid(), 0}:
        raise PayloadError(
            f"{what} {path} belongs to user {info.st_uid}, neither this user ({os.geteuid()}) nor root; "
            "refusing it (chown it to root or the service user)"
        )


def registry_text(keys: Mapping[str, str], section: str = UNITS) -> str:
    return json.dumps({section: dict(sorted(keys.items()))}, indent=2) + "\n"


def register_key(
    path: Path, name: str, public_text: str, section: str = UNITS, *, rotate: bool = False
) -> str:
    """Adds one public key to a key file (made if missing), keeping every other entry; says
    ``registered``, ``unchanged`` or ``rotated``. Another key under the same name is refused unless
    ``rotate``: a unit whose key changed unannounced may be a swapped unit, not a regenerated one."""
    what = KEY_FILE_NAMES[section]
    try:
        Ed25519PublicKey.from_public_bytes(_unb64(public_text))
    except (ValueError, binascii.Error) as error:
        raise PayloadError(
            f"{what} {path}: the key given for {name!r} is not an Ed25519 public key: {error}"
        ) from None
    keys = read_key_file(path, section) if path.exists() else {}
    known = keys.get(name)
    if known == public_text:
        return "unchanged"
    if known is not None and not rotate:
        raise PayloadError(
            f"{what} {path} already holds another key for {name!r}: if that key was regenerated on "
            "purpose, register the new one with --rotate (the fleet playbook: -e rotate_event_key=true "
            "--limit the unit)"
        )
    keys[name] = public_text
    write_atomically(path, registry_text(keys, section).encode(), mode=0o644)
    return "registered" if known is None else "rotated"


@dataclass
class EventVerifier:
    """Checks each received event: signed by its unit's registered key, fresh, and later than the last.

    ``seq`` order per unit: an event whose ``seq`` is not above the highest accepted one is a replay
    (the consumer deduplicates redeliveries by ``event_id`` before this check).
    """

    keys: Mapping[str, Ed25519PublicKey]
    max_age_s: float = DEFAULT_MAX_AGE_S
    clock: Callable[[], float] = time.time
    # The registry file the keys came from: read again when an event names a unit not in it yet (a unit
    # registered after the consumer started), never to replace a key that is already known.
    registry_path: Path | None = None
    # False for a consumer whose store is idempotent on (unit, seq), such as the archive: there a replay
    # is a row that exists already, and events may arrive out of order (a shared subscription hands a
    # dead member's unacknowledged events to another member after it has seen later ones).
    check_order: bool = True
    _last_seq: dict[str, int] = field(default_factory=dict, init=False)

    def _key_for(self, unit: str) -> Ed25519PublicKey | None:
        key = self.keys.get(unit)
        if key is None and self.registry_path is not None and self.registry_path.exists():
            try:
                fresh = load_registry(self.registry_path)
            except (PayloadError, InputFileError):  # a registry replaced by junk trusts no one new
                return None
            self.keys = {**fresh, **self.keys}  # known units keep the key they were first trusted with
            key = self.keys.get(unit)
        return key

    def remember(self, last_seqs: Mapping[str, int]) -> None:
        """Seeds the highest accepted ``seq`` per unit (a consumer's own record from before a restart)."""
        for unit, seq in last_seqs.items():
            self._last_seq[unit] = max(seq, self._last_seq.get(unit, 0))

    def verify(self, event: Mapping[str, Any]) -> None:
        unit = str(event.get("unit"))
        signature = event.get(SIGNATURE_FIELD)
        if not isinstance(signature, str):
            raise SignatureError(f"unsigned event from {unit!r}")
        key = self._key_for(unit)
        if key is None:
            raise SignatureError(f"event from unit {unit!r}, which is not in the key registry")
        if not signed_by(key, signature, event):
            raise SignatureError(f"wrongly signed event claiming unit {unit!r}")
        age = self.clock() - _epoch(str(event["ts"]))
        if age > self.max_age_s:
            raise SignatureError(f"stale event from {unit!r}: {age:.0f} s old")
        if age < -MAX_CLOCK_SKEW_S:
            raise SignatureError(f"event from {unit!r} dated {-age:.0f} s in the future")
        if not self.check_order:
            return
        seq = int(event["seq"])
        last = self._last_seq.get(unit, 0)
        if seq <= last:
            raise SignatureError(f"replayed event from {unit!r}: seq {seq} after seq {last}")
        self._last_seq[unit] = seq


def _epoch(ts: str) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SignatureError(f"event time {ts!r} is not a time") from None


# --- signed commands ---------------------------------------------------------------------------------


def signed_command(
    key: EventKey,
    commander: str,
    name: str,
    *,
    unit: str,
    subject_id: str | None = None,
    ttl_s: float = 30.0,
    now: float | None = None,
    request_id: str | None = None,
) -> bytes:
    """A command for ``unit``, signed by ``commander``'s key, valid ``ttl_s`` from ``now``, schema-checked."""
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {
        "command": name,
        "unit": unit,
        "commander": commander,
        "request_id": request_id or f"{commander}-{secrets.token_hex(8)}",
        "issued_at": utc_timestamp(issued),
        "expires_at": utc_timestamp(issued + ttl_s),
    }
    if subject_id is not None:
        payload["subject_id"] = subject_id
    return encode("cmd", key.sign(payload))


@dataclass(frozen=True)
class CommandVerifier:
    """The unit's check of who sent a command: a trusted commander's valid signature, or a refusal."""

    commanders: Mapping[str, Ed25519PublicKey]

    @classmethod
    def from_config(cls, path: Path | None) -> CommandVerifier:
        """No file configured: no commander is trusted and every command is refused."""
        if path is None:
            return cls({})
        check_trust_file(path, KEY_FILE_NAMES[COMMANDERS])
        return cls(load_registry(path, COMMANDERS))

    def verify(self, payload: Mapping[str, Any]) -> None:
        commander = str(payload.get("commander"))
        signature = payload.get(SIGNATURE_FIELD)
        if not self.commanders:
            raise SignatureError("this unit trusts no commander (mqtt.command_keys): commands are refused")
        if not isinstance(signature, str):
            raise SignatureError(f"unsigned command claiming commander {commander!r}")
        key = self.commanders.get(commander)
        if key is None:
            raise SignatureError(f"command from {commander!r}, whom this unit does not trust")
        if not signed_by(key, signature, payload):
            raise SignatureError(f"wrongly signed command claiming commander {commander!r}")


# --- the unit's answers to commands ---------------------------------------------------------------------

# An answer comes while its command is alive; one dated further back is a recording.
MAX_ANSWER_AGE_S = MAX_COMMAND_LIFETIME_S + MAX_CLOCK_SKEW_S


def check_answer(
    keys: Mapping[str, Ed25519PublicKey],
    data: bytes,
    *,
    unit: str,
    request_id: str,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The answer of ``unit`` to the command ``request_id``, or ``SignatureError``/``PayloadError``.

    Whoever can publish on the answer topic (a broker operator, a stolen certificate) could otherwise
    tell a commander its claim applied: the answer must carry the unit's own signature (the key in the
    unit key registry), name that unit and that request, and be from now.
    """
    answer = decode("answer", data)
    signature = answer.get(SIGNATURE_FIELD)
    if not isinstance(signature, str):
        raise SignatureError(f"unsigned answer claiming unit {answer['unit']!r}")
    if answer["unit"] != unit:
        raise SignatureError(f"answer from unit {answer['unit']!r}, not {unit!r}")
    key = keys.get(unit)
    if key is None:
        raise SignatureError(f"unit {unit!r} is not in the key registry: its answers cannot be checked")
    if not signed_by(key, signature, answer):
        raise SignatureError(f"wrongly signed answer claiming unit {unit!r}")
    if answer["request_id"] != request_id:
        raise SignatureError(f"answer to request {answer['request_id']!r}, not {request_id!r}")
    age = clock() - _epoch(str(answer["ts"]))
    if not -MAX_CLOCK_SKEW_S <= age <= MAX_ANSWER_AGE_S:
        raise SignatureError(f"answer from {unit!r} dated {age:.0f} s from now")
    return answer
