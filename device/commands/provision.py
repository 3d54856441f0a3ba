"""``device provision ...``: enrolled sets sealed for one unit and signed by the fleet (identity/sealed.py).

On the unit: ``keygen`` once (the fleet playbook fetches the public half), then ``check`` and
``import`` for each sealed file it receives. On the fleet controller: ``seal``. Nothing here goes over
MQTT, and ``check`` prints counts and dates only, never names or templates.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np

from device.atomicio import create_exclusively, ensure_private_directory, read_capped
from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.commands._gallery_cli import add_operator_option, operator_of
from device.config import UnitConfig
from device.identity.gallery_records import GalleryError
from device.identity.gallery_store import EnrolRequest, GalleryStore, check_expiry, normalise_templates
from device.identity.sealed import (
    MAX_KEY_FILE_BYTES,
    MAX_SEALED_BYTES,
    SIGNER_FILE_NAME,
    EnrolledSet,
    SealedError,
    generate_provision_key,
    generate_signer_key,
    key_id,
    load_private_key,
    load_public_key,
    load_signer_private,
    load_signer_public,
    open_sealed,
    parse_enrolled_set,
    public_key_path,
    seal,
    signer_key_id,
)
from device.layout import StateLayout


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("provision", "enrolled sets sealed for one unit's key (never over MQTT)")
    keygen = group.add("keygen", make_key, "make this unit's provisioning key pair (once)")
    keygen.add_argument("--key", type=Path, default=None, help="default: provision.key beside the master key")

    sealer = group.add("seal", seal_set, "encrypt an enrolled set (JSON) for one unit's public key")
    sealer.add_argument("--recipient", type=Path, required=True, help="the unit's provision.pub")
    sealer.add_argument("--unit", required=True, help="the unit's id (the file only opens on that unit)")
    sealer.add_argument("--in", dest="source", type=Path, required=True, help="enrolled set JSON")
    sealer.add_argument("--out", type=Path, required=True, help="sealed file to write (must not exist)")
    sealer.add_argument(
        "--signing-key", type=Path, required=True, help="the fleet controller's enrolment-signer.key"
    )

    signer = group.add("signer-keygen", make_signer_key, "make the fleet controller's enrolment-signing key")
    signer.add_argument("--out", type=Path, required=True, help="private key file (0600); .pub beside it")

    trust = group.add(
        "trust-signer", trust_signer, "pin the fleet's enrolment-signing public key on this unit"
    )
    trust.add_argument(
        "public_key", type=Path, metavar="PUB", help="enrolment-signer.pub from the controller"
    )

    checker = group.add("check", check_sealed, "verify a sealed file opens on this unit; print counts only")
    checker.add_argument("--in", dest="source", type=Path, required=True)
    checker.add_argument("--key", type=Path, default=None)

    importer = group.add("import", import_sealed, "check a sealed file, then enrol its subjects (once)")
    importer.add_argument("--in", dest="source", type=Path, required=True)
    importer.add_argument("--key", type=Path, default=None)
    add_operator_option(importer)


def default_key_path(config: UnitConfig) -> Path:
    return config.gallery.master_key_path.parent / "provision.key"


def _key_path(args: argparse.Namespace, config: UnitConfig) -> Path:
    return Path(args.key) if args.key is not None else default_key_path(config)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def make_key(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    path = _key_path(args, config)
    try:
        ensure_private_directory(path.parent)
        public = generate_provision_key(path)
    except OSError as error:
        return _fail(str(error))
    print(f"provisioning key {path} (mode 0600, key id {key_id(public)})")
    print(public_key_path(path))
    return EXIT_OK


def seal_set(args: argparse.Namespace) -> int:
    try:
        recipient = load_public_key(args.recipient)
        signer = load_signer_private(args.signing_key)
        source = read_capped(args.source, MAX_SEALED_BYTES, "the enrolled set")
        enrolled = parse_enrolled_set(source, str(args.source))
        sealed = seal(enrolled, recipient, args.unit, signer)
        create_exclusively(args.out, sealed)
    except FileExistsError:
        return _fail(f"{args.out} already exists")
    except OSError as error:
        return _fail(str(error))
    print(
        f"sealed {len(enrolled.subjects)} subjects for unit {args.unit} (key {key_id(recipient)}): {args.out}"
    )
    return EXIT_OK


def pinned_signer_path(config: UnitConfig) -> Path:
    return config.gallery.master_key_path.parent / SIGNER_FILE_NAME


def make_signer_key(args: argparse.Namespace) -> int:
    try:
        public = generate_signer_key(args.out)
    except OSError as error:
        return _fail(str(error))
    print(
        f"enrolment-signing key {args.out} (mode 0600, id {signer_key_id(public)}); keep it on the controller"
    )
    print(public_key_path(args.out))
    return EXIT_OK


def trust_signer(args: argparse.Namespace) -> int:
    """Pinned once: a different key later is refused (replace the file by hand, deliberately, if needed)."""
    config = config_from_args(args)
    pinned = pinned_signer_path(config)
    try:
        public = load_signer_public(args.public_key)
        if pinned.exists():
            if load_signer_public(pinned) == public:
                print(f"already trusted: enrolment signer {signer_key_id(public)}")
                return EXIT_OK
            return _fail(
                f"{pinned} already pins another enrolment signer; a pinned key is never replaced here"
            )
        create_exclusively(
            pinned, read_capped(args.public_key, MAX_KEY_FILE_BYTES, "the key file"), mode=0o644
        )
    except OSError as error:
        return _fail(str(error))
    print(f"trusting enrolment signer {signer_key_id(public)} ({pinned})")
    return EXIT_OK


def _open(args: argparse.Namespace, config: UnitConfig) -> tuple[str, EnrolledSet]:
    private = load_private_key(_key_path(args, config))
    pinned = pinned_signer_path(config)
    if not pinned.exists():
        raise SealedError(
            f"no fleet enrolment signer is pinned ({pinned}); run `device provision trust-signer PUB` once"
        )
    trusted = load_signer_public(pinned)
    try:
        data = read_capped(args.source, MAX_SEALED_BYTES, "the sealed set")
    except OSError as error:
        raise SealedError(f"cannot read {args.source}: {error.strerror}") from None
    bundle, enrolled = open_sealed(data, private, config.unit.id, str(args.source), trusted)
    today = date.today()
    for number, subject in enumerate(enrolled.subjects, start=1):
        try:
            normalise_templates(np.asarray(subject.templates, dtype=np.float32))
            if subject.expires is not None:
                check_expiry(subject.expires, today)
        except GalleryError as error:
            raise SealedError(f"{args.source}: subject {number}: {error}") from None
    return bundle, enrolled


def _summary(bundle: str, enrolled: EnrolledSet) -> str:
    expiries = sorted(s.expires.isoformat() for s in enrolled.subjects if s.expires is not None)
    templates = sum(len(s.templates) for s in enrolled.subjects)
    span = f", expiries {expiries[0]}..{expiries[-1]}" if expiries else ""
    return f"bundle {bundle}: {len(enrolled.subjects)} subjects, {templates} templates{span}"


def check_sealed(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        bundle, enrolled = _open(args, config)
    except SealedError as error:
        return _fail(str(error))
    print(f"ok: sealed for unit {config.unit.id}; {_summary(bundle, enrolled)}")
    return EXIT_OK


def import_sealed(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        bundle, enrolled = _open(args, config)
    except SealedError as error:
        return _fail(str(error))
    # One marker per bundle makes a re-run of the playbook a no-op instead of a second enrolment.
    markers = StateLayout.from_config(config).provisioned
    marker = markers / bundle
    if marker.exists():
        print(f"already imported: bundle {bundle}")
        return EXIT_OK
    store = GalleryStore.from_config(config)
    operator = operator_of(args)
    for subject in enrolled.subjects:
        store.enrol(
            EnrolRequest(
                name=subject.name,
                templates=np.asarray(subject.templates, dtype=np.float32),
                consent_reference=subject.consent_reference,
                operator=f"{subject.operator} (provisioned by {operator})",
                purpose_version=subject.purpose_version,
                expires=subject.expires,
            )
        )
    ensure_private_directory(markers)
    create_exclusively(marker, f"{_summary(bundle, enrolled)}\n".encode())
    print(f"imported {_summary(bundle, enrolled)}")
    return EXIT_OK
