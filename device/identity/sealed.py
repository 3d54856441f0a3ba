"""Enrolled sets sealed for one unit: how enrolments travel from the enrolment station to a unit.

Templates are biometric data, so they never travel over MQTT and never in the clear. Each unit has a
provisioning key pair (X25519) made on the unit (``device provision keygen``); only its public half
leaves the unit. The fleet controller seals an enrolled set for that public key
(``device provision seal``), copies the file to the unit (SSH, by the fleet playbook) and the unit
opens and imports it (``device provision check`` / ``import``).

Sealing: an ephemeral X25519 key agrees a secret with the unit's key; HKDF-SHA256 (salt: both public
keys) turns it into an AES-256-GCM key; the header (format, unit id, recipient key id, ephemeral key,
bundle id) is the associated data, so a file sealed for one unit cannot be relabelled for another and
any changed byte fails decryption. A new ephemeral key per file means nothing is reused across units.

Who made it: the fleet controller signs every sealed file with its Ed25519 enrolment-signing key
(``device provision signer-keygen`` on the controller); the unit pins that public key once, at
provisioning (``device provision trust-signer``, kept beside the master key), and refuses any file not
signed by it: anyone may hold ``provision.pub``, only the controller can make an importable set. The
signature covers the header, nonce and ciphertext, and is checked before anything is decrypted. The
bundle id names a marker file on the unit, so it is checked to be 16 hex digits before any path is built.

Files (text):

    provision.key   ecpk1:<base64 32-byte X25519 private key>   0600, in the unit's secrets folder
    provision.pub   ecpub1:<base64 32-byte X25519 public key>   public; the controller needs it
    enrolment-signer.key  ecsk1:<base64 Ed25519 private key>   0600, on the fleet controller only
    enrolment-signer.pub  ecspub1:<base64 Ed25519 public key>  pinned on each unit (secrets folder)
    <unit>.sealed   JSON {"header": {...}, "nonce": b64, "ciphertext": b64, "signature": b64}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import stat
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from device.atomicio import create_exclusively, read_capped
from device.config import UNIT_ID_PATTERN, describe_validation_error
from device.errors import UserError

FORMAT = "entrance-camera sealed enrolled set"
FORMAT_VERSION = 1
PRIVATE_PREFIX = "ecpk1:"
SIGNER_PRIVATE_PREFIX = "ecsk1:"
SIGNER_PUBLIC_PREFIX = "ecspub1:"
SIGNER_FILE_NAME = "enrolment-signer.pub"
BUNDLE_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
PUBLIC_PREFIX = "ecpub1:"
KEY_BYTES = 32
NONCE_BYTES = 12
TEMPLATE_DIM = 128
MAX_KEY_FILE_BYTES = 4096  # a comment line and one base64 key
MAX_SEALED_BYTES = 16 * 1024 * 1024  # a few hundred residents x 5 templates is well under 2 MiB
HKDF_INFO = b"entrance-camera sealed enrolled set v1"
PRIVATE_HEADER = "# entrance-camera provisioning key. Keep mode 0600; never copy it off the unit.\n"
PUBLIC_HEADER = "# entrance-camera provisioning public key: seal enrolled sets for this unit with it.\n"


class SealedError(UserError):
    """A key or sealed file that cannot be used; the message says why."""


# --- the enrolled set (the plaintext) --------------------------------------------------------------

Template = Annotated[list[float], Field(min_length=TEMPLATE_DIM, max_length=TEMPLATE_DIM)]


class ProvisionedSubject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, max_length=200)
    templates: list[Template] = Field(min_length=1, max_length=32)
    consent_reference: str = Field(min_length=1, max_length=200, description="the signed form's reference")
    purpose_version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    operator: str = Field(min_length=1, max_length=100, description="who enrolled the person")
    expires: date | None = None

    @field_validator("templates")
    @classmethod
    def _usable_templates(cls, templates: list[list[float]]) -> list[list[float]]:
        for row in templates:
            total = 0.0
            for value in row:
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError("templates contain NaN or infinite values")
                total += value * value
            if total == 0.0:
                raise ValueError("a template is all zeros")
        return templates


class EnrolledSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: int = Field(default=1, alias="schema", ge=1, le=1)
    subjects: list[ProvisionedSubject] = Field(max_length=10_000)


def parse_enrolled_set(data: bytes, source: str) -> EnrolledSet:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SealedError(f"{source}: not JSON ({error})") from None
    except RecursionError:  # found by the fuzz target: "[" nested a few thousand deep
        raise SealedError(f"{source}: not a valid enrolled set: nested too deeply") from None
    try:
        return EnrolledSet.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(describe_validation_error(error)[:10])
        raise SealedError(f"{source}: not a valid enrolled set: {problems}") from None


# --- keys -------------------------------------------------------------------------------------------


def key_id(public: bytes) -> str:
    """Public fingerprint of a provisioning key: names the recipient without revealing anything."""
    return hashlib.sha256(b"entrance-camera provision key id\x00" + public).hexdigest()[:16]


def public_key_path(private_path: Path) -> Path:
    return private_path.with_suffix(".pub")


def generate_provision_key(private_path: Path) -> bytes:
    """New key pair: private file 0600 from creation (never overwritten), public file beside it."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes_raw()
    public = private.public_key().public_bytes_raw()
    text = PRIVATE_HEADER + PRIVATE_PREFIX + base64.b64encode(raw).decode() + "\n"
    try:
        create_exclusively(private_path, text.encode())
    except FileExistsError:
        raise SealedError(f"{private_path} already exists; a provisioning key is never overwritten") from None
    public_text = PUBLIC_HEADER + PUBLIC_PREFIX + base64.b64encode(public).decode() + "\n"
    public_path = public_key_path(private_path)
    public_path.unlink(missing_ok=True)
    create_exclusively(public_path, public_text.encode(), mode=0o644)
    return public


def _decode_key_file(path: Path, prefix: str) -> bytes:
    try:
        lines = read_capped(path, MAX_KEY_FILE_BYTES, "key file").decode("utf-8").splitlines()
    except FileNotFoundError:
        raise SealedError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SealedError(f"cannot read key file {path}: {error}") from None
    values = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if len(values) != 1 or not values[0].startswith(prefix):
        raise SealedError(f"{path} is not a {prefix.rstrip(':')} key file")
    try:
        raw = base64.b64decode(values[0][len(prefix) :], validate=True)
    except binascii.Error:
        raise SealedError(f"{path}: key is not base64") from None
    if len(raw) != KEY_BYTES:
        raise SealedError(f"{path}: key has {len(raw)} bytes, expected {KEY_BYTES}")
    return raw


def load_public_key(path: Path) -> bytes:
    return _decode_key_file(path, PUBLIC_PREFIX)


def signer_key_id(public: bytes) -> str:
    return hashlib.sha256(b"entrance-camera enrolment signer id\x00" + public).hexdigest()[:16]


def generate_signer_key(private_path: Path) -> bytes:
    """The fleet controller's enrolment-signing key pair (private 0600, never overwritten)."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    text = "# entrance-camera enrolment-signing key: fleet controller only.\n" + SIGNER_PRIVATE_PREFIX
    try:
        create_exclusively(
            private_path, (text + base64.b64encode(private.private_bytes_raw()).decode() + "\n").encode()
        )
    except FileExistsError:
        raise SealedError(f"{private_path} already exists; a signing key is never overwritten") from None
    public_path = public_key_path(private_path)
    public_path.unlink(missing_ok=True)
    public_text = (
        "# entrance-camera enrolment-signing public key: pin it on every unit.\n" + SIGNER_PUBLIC_PREFIX
    )
    create_exclusively(
        public_path, (public_text + base64.b64encode(public).decode() + "\n").encode(), mode=0o644
    )
    return public


def load_signer_private(path: Path) -> Ed25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SealedError(
            f"signing key {path} does not exist (run `device provision signer-keygen`)"
        ) from None
    if mode & 0o077:
        raise SealedError(f"signing key {path} has mode {mode:04o}; refusing it (chmod 600 {path})")
    return Ed25519PrivateKey.from_private_bytes(_decode_key_file(path, SIGNER_PRIVATE_PREFIX))


def load_signer_public(path: Path) -> bytes:
    return _decode_key_file(path, SIGNER_PUBLIC_PREFIX)


def load_private_key(path: Path) -> X25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SealedError(f"provisioning key {path} does not exist (run `device provision keygen`)") from None
    if mode & 0o077:
        raise SealedError(f"provisioning key {path} has mode {mode:04o}; refusing it (chmod 600 {path})")
    return X25519PrivateKey.from_private_bytes(_decode_key_file(path, PRIVATE_PREFIX))


# --- sealing ----------------------------------------------------------------------------------------


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=ephemeral + recipient, info=HKDF_INFO)
    return hkdf.derive(shared)


def _signed_bytes(header: dict[str, Any], nonce: bytes, ciphertext: bytes) -> bytes:
    return _aad(header) + b"\x00" + nonce + ciphertext


def seal(enrolled: EnrolledSet, recipient_public: bytes, unit_id: str, signer: Ed25519PrivateKey) -> bytes:
    """The enrolled set encrypted for one unit's provisioning key, bound to its unit id."""
    if not re.match(UNIT_ID_PATTERN, unit_id):
        raise SealedError(f"unit id {unit_id!r} must match {UNIT_ID_PATTERN}")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "unit": unit_id,
        "recipient": key_id(recipient_public),
        "ephemeral": base64.b64encode(ephemeral_public).decode(),
        "bundle": secrets.token_hex(8),
        "subjects": len(enrolled.subjects),
        "signer": signer_key_id(signer.public_key().public_bytes_raw()),
    }
    nonce = secrets.token_bytes(NONCE_BYTES)
    plaintext = enrolled.model_dump_json(by_alias=True).encode()
    ciphertext = AESGCM(_derive(shared, ephemeral_public, recipient_public)).encrypt(
        nonce, plaintext, _aad(header)
    )
    document = {
        "header": header,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "signature": base64.b64encode(signer.sign(_signed_bytes(header, nonce, ciphertext))).decode(),
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def read_header(data: bytes, source: str) -> tuple[dict[str, Any], bytes, bytes, bytes | None]:
    if len(data) > MAX_SEALED_BYTES:
        raise SealedError(f"{source}: {len(data)} bytes, more than a sealed set may have")
    try:
        document = json.loads(data)
        header = document["header"]
        nonce = base64.b64decode(document["nonce"], validate=True)
        ciphertext = base64.b64decode(document["ciphertext"], validate=True)
        signature_text = document.get("signature")
        signature = None if signature_text is None else base64.b64decode(signature_text, validate=True)
    except (
        UnicodeDecodeError,
        json.JSONDecodeError,
        KeyError,
        TypeError,
        AttributeError,
        binascii.Error,
        RecursionError,
    ):
        raise SealedError(f"{source}: not a sealed enrolled set") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SealedError(f"{source}: not a sealed enrolled set")
    if header.get("version") != FORMAT_VERSION:
        raise SealedError(f"{source}: sealed format version {header.get('version')!r}, this unit reads 1")
    return header, nonce, ciphertext, signature


def open_sealed(
    data: bytes, private: X25519PrivateKey, unit_id: str, source: str, trusted_signer: bytes
) -> tuple[str, EnrolledSet]:
    """(bundle id, enrolled set) after checking who signed it, that it was sealed for this unit and key,
    and that it is intact."""
    header, nonce, ciphertext, signature = read_header(data, source)
    if signature is None:
        raise SealedError(f"{source} is not signed: only sets signed by the pinned fleet key are imported")
    try:
        Ed25519PublicKey.from_public_bytes(trusted_signer).verify(
            signature, _signed_bytes(header, nonce, ciphertext)
        )
    except (InvalidSignature, ValueError):
        raise SealedError(
            f"{source} is not signed by the pinned fleet enrolment key "
            f"({signer_key_id(trusted_signer)}): refused"
        ) from None
    bundle = header.get("bundle")
    if not isinstance(bundle, str) or not BUNDLE_ID_PATTERN.fullmatch(bundle):
        raise SealedError(f"{source}: bundle id {str(bundle)[:40]!r} is not 16 hex digits")
    own_public = private.public_key().public_bytes_raw()
    if header.get("unit") != unit_id:
        raise SealedError(f"{source} was sealed for unit {header.get('unit')!r}, this is {unit_id!r}")
    if header.get("recipient") != key_id(own_public):
        raise SealedError(
            f"{source} was sealed for provisioning key {header.get('recipient')!r}, this unit's is "
            f"{key_id(own_public)!r} (re-seal it with this unit's provision.pub)"
        )
    try:
        ephemeral = base64.b64decode(str(header.get("ephemeral")), validate=True)
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        plaintext = AESGCM(_derive(shared, ephemeral, own_public)).decrypt(nonce, ciphertext, _aad(header))
    except (binascii.Error, ValueError, InvalidTag):
        raise SealedError(f"{source}: does not decrypt: the file was changed or is damaged") from None
    enrolled = parse_enrolled_set(plaintext, source)
    if header.get("subjects") != len(enrolled.subjects):
        raise SealedError(f"{source}: header and contents disagree on the number of subjects")
    return bundle, enrolled
