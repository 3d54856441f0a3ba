#!/usr/bin/env python3
"""Certificate authority for the broker kit: CA, broker certificate, unit and consumer certificates, CRL.

Every MQTT client authenticates with a certificate whose common name is its identity; Mosquitto's
`use_identity_as_username` turns that CN into the username the ACL patterns (`%u`) match. So the CN
must be a plain name (no `/`, `+`, `#`): a unit id or a consumer name.

Layout of a PKI directory (keys 0600, the directory 0700; none of it belongs in the repository):

    ca.crt ca.key crl.pem index.json
    broker/broker.crt broker/broker.key
    units/<id>.crt units/<id>.key
    consumers/<name>.crt consumers/<name>.key
    buildings/<id>.crt buildings/<id>.key    (central CA only: a building broker's bridge)

Usage, from the repository root (see deploy/broker/README.md):

    python3 -m deploy.broker.pki --dir PKI init [--ca-name NAME]
    python3 -m deploy.broker.pki --dir PKI broker --host mqtt.example.org --ip 10.0.0.5
    python3 -m deploy.broker.pki --dir PKI unit lobby-1
    python3 -m deploy.broker.pki --dir PKI consumer backend
    python3 -m deploy.broker.pki --dir PKI building north     # central CA: a building's bridge
    python3 -m deploy.broker.pki --dir PKI revoke lobby-1
    python3 -m deploy.broker.pki --dir PKI crl            # re-sign the CRL before it expires
    python3 -m deploy.broker.pki --dir PKI crl-status     # exit 1 if it expires within 30 days
    python3 -m deploy.broker.pki --dir PKI list
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# building: a building broker's bridge to the central broker (deploy/broker/bridge.py), certified by
# the central CA; its CN is the building id the central ACL confines to its own topic prefix.
Role = Literal["unit", "consumer", "building"]
ROLES: tuple[Role, ...] = ("unit", "consumer", "building")
ROLE_FOLDERS: dict[Role, str] = {"unit": "units", "consumer": "consumers", "building": "buildings"}
# Same rule as the unit id in device/config.py; consumers follow it too so that no identity can carry
# MQTT wildcards or a topic separator into the ACL patterns.
IDENTITY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_HOSTS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825
# Mosquitto refuses every client once the CRL's nextUpdate has passed, so the CRL is re-signed
# (`pki.py crl`) well within this window, e.g. from a monthly timer.
CRL_DAYS = 90
# Allows for clocks that are a little behind the CA's.
BACKDATE = dt.timedelta(minutes=5)


class PkiError(Exception):
    """A PKI operation that cannot be done as asked (bad name, missing CA, unknown identity)."""


@dataclass(frozen=True)
class IssuedCert:
    identity: str
    role: Role
    serial: int
    not_after: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Writes a key so that it is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.chmod(0o600)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: small, fast to generate on a Pi, supported by every TLS stack MQTT clients use.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def check_identity(identity: str) -> str:
    if not IDENTITY_PATTERN.fullmatch(identity):
        raise PkiError(
            f"identity {identity!r} is not allowed: use lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return identity


class Pki:
    """One certificate authority in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    # Paths -------------------------------------------------------------------------------------
    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def broker_files(self) -> CertFiles:
        return CertFiles(self.dir / "broker" / "broker.crt", self.dir / "broker" / "broker.key")

    def client_files(self, identity: str, role: Role) -> CertFiles:
        folder = self.dir / ROLE_FOLDERS[role]
        return CertFiles(folder / f"{identity}.crt", folder / f"{identity}.key")

    # CA ----------------------------------------------------------------------------------------
    def init(self, ca_name: str = "entrance-camera broker CA", days: int = CA_DAYS) -> None:
        if self.ca_cert_path.exists():
            raise PkiError(f"{self.ca_cert_path} exists already; refusing to replace the CA")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.chmod(0o700)
        key = _new_key()
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key_path, _key_pem(key))
        _write_public(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self._save_index([])
        self.write_crl()

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.ca_cert_path.exists() or not self.ca_key_path.exists():
            raise PkiError(f"no CA in {self.dir}: run `pki.py --dir {self.dir} init` first")
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path} is not an EC key made by this script")
        return cert, key

    # Index -------------------------------------------------------------------------------------
    def issued(self) -> list[IssuedCert]:
        if not self.index_path.exists():
            return []
        raw = json.loads(self.index_path.read_text(encoding="utf-8"))
        return [IssuedCert(**item) for item in raw["certificates"]]

    def _save_index(self, certs: list[IssuedCert]) -> None:
        body = {"schema": 1, "certificates": [asdict(cert) for cert in certs]}
        _write_public(self.index_path, (json.dumps(body, indent=2) + "\n").encode())

    # Leaves ------------------------------------------------------------------------------------
    def _issue(
        self,
        subject: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        not_before: dt.datetime | None,
        days: int,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        ca_cert, ca_key = self._ca()
        key = _new_key()
        start = not_before if not_before is not None else _now() - BACKDATE
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    def issue_broker(
        self,
        hosts: list[str] | tuple[str, ...] = (),
        ips: list[str] | tuple[str, ...] = (),
        days: int = LEAF_DAYS,
    ) -> CertFiles:
        """The broker's server certificate; localhost and loopback are always included for local clients."""
        all_hosts = list(dict.fromkeys([*hosts, *DEFAULT_HOSTS]))
        all_ips = list(dict.fromkeys([*ips, *DEFAULT_IPS]))
        sans: list[x509.GeneralName] = [x509.DNSName(host) for host in all_hosts]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in all_ips]
        cert, key = self._issue(all_hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans, None, days)
        files = self.broker_files()
        _write_private(files.key, _key_pem(key))
        _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        return files

    def issue_client(
        self,
        identity: str,
        role: Role,
        *,
        days: int = LEAF_DAYS,
        not_before: dt.datetime | None = None,
        files: CertFiles | None = None,
    ) -> CertFiles:
        """A client certificate with CN = identity. Re-issuing an identity replaces its files (the old
        certificate stays valid until it expires or is revoked; revoke first to retire it).
        `files` writes elsewhere than the usual place (tests keep odd certificates apart)."""
        check_identity(identity)
        if role not in ROLES:
            raise PkiError(f"role must be one of {ROLES}, not {role!r}")
        issued = self.issued()
        # A consumer named like a unit would pass the unit ACL patterns for that unit's topics.
        clash = [c for c in issued if c.identity == identity and c.role != role and c.revoked_at is None]
        if clash:
            raise PkiError(
                f"{identity!r} is already a {clash[0].role}; identities must be unique across roles"
            )
        cert, key = self._issue(identity, ExtendedKeyUsageOID.CLIENT_AUTH, [], not_before, days)
        files = files or self.client_files(identity, role)
        _write_private(files.key, _key_pem(key))
        _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        issued.append(
            IssuedCert(identity, role, cert.serial_number, cert.not_valid_after_utc.isoformat(), None)
        )
        self._save_index(issued)
        return files

    def revoke(self, identity: str) -> list[int]:
        """Revokes every unrevoked certificate of an identity, rewrites the CRL, returns the serials."""
        now = _now().isoformat()
        revoked: list[int] = []
        updated: list[IssuedCert] = []
        for cert in self.issued():
            if cert.identity == identity and cert.revoked_at is None:
                revoked.append(cert.serial)
                cert = IssuedCert(cert.identity, cert.role, cert.serial, cert.not_after, now)
            updated.append(cert)
        if not revoked:
            raise PkiError(f"no valid certificate issued to {identity!r} in {self.dir}")
        self._save_index(updated)
        self.write_crl()
        return revoked

    def write_crl(self, days: int = CRL_DAYS, *, now: dt.datetime | None = None) -> Path:
        """Signs the CRL of every revoked certificate, valid `days` from `now` (default: the clock)."""
        ca_cert, ca_key = self._ca()
        now = now or _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + dt.timedelta(days=days))
        )
        for cert in self.issued():
            if cert.revoked_at is None:
                continue
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial)
                .revocation_date(dt.datetime.fromisoformat(cert.revoked_at))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def crl_next_update(self) -> dt.datetime:
        """When the current CRL expires: after that Mosquitto refuses every client certificate."""
        if not self.crl_path.exists():
            raise PkiError(f"no CRL in {self.dir}: run `pki.py --dir {self.dir} crl`")
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        next_update = crl.next_update_utc
        if next_update is None:
            raise PkiError(f"{self.crl_path} has no nextUpdate")
        return next_update


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PKI for the entrance-camera MQTT broker")
    parser.add_argument("--dir", type=Path, required=True, help="PKI directory (outside the repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make the CA (once)")
    init.add_argument("--ca-name", default="entrance-camera broker CA")
    init.add_argument("--days", type=int, default=CA_DAYS)
    broker = sub.add_parser("broker", help="(re)issue the broker's server certificate")
    broker.add_argument("--host", action="append", default=[], help="DNS name clients connect to")
    broker.add_argument("--ip", action="append", default=[], help="IP address clients connect to")
    broker.add_argument("--days", type=int, default=LEAF_DAYS)
    for role in ROLES:
        leaf = sub.add_parser(role, help=f"issue a {role} certificate (CN = identity)")
        leaf.add_argument("identity")
        leaf.add_argument("--days", type=int, default=LEAF_DAYS)
    revoke = sub.add_parser("revoke", help="revoke an identity and rewrite the CRL")
    revoke.add_argument("identity")
    crl = sub.add_parser("crl", help="re-sign the CRL (do this before it expires)")
    crl.add_argument("--days", type=int, default=CRL_DAYS)
    status = sub.add_parser("crl-status", help="exit 1 when the CRL expires within --warn-days (monitoring)")
    status.add_argument("--warn-days", type=int, default=30)
    sub.add_parser("list", help="list issued certificates")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pki = Pki(args.dir)
    try:
        if args.command == "init":
            pki.init(args.ca_name, args.days)
            print(f"CA: {pki.ca_cert_path} (key {pki.ca_key_path}, keep it offline)")
        elif args.command == "broker":
            files = pki.issue_broker(args.host, args.ip, args.days)
            print(f"broker: {files.cert} {files.key}")
        elif args.command in ROLES:
            files = pki.issue_client(args.identity, args.command, days=args.days)
            print(f"{args.command} {args.identity}: {files.cert} {files.key}")
        elif args.command == "revoke":
            serials = pki.revoke(args.identity)
            print(
                f"revoked {args.identity} (serials {', '.join(hex(s) for s in serials)}); CRL {pki.crl_path}"
            )
            print("reload the broker (SIGHUP or restart) with the new CRL")
        elif args.command == "crl":
            print(f"CRL: {pki.write_crl(args.days)}")
        elif args.command == "crl-status":
            left = pki.crl_next_update() - _now()
            print(f"CRL {pki.crl_path} valid until {pki.crl_next_update().isoformat()} ({left.days} days)")
            if left < dt.timedelta(days=args.warn_days):
                print("re-sign it now (`pki.py crl`) and reload the broker", file=sys.stderr)
                return 1
        elif args.command == "list":
            for cert in pki.issued():
                state = f"revoked {cert.revoked_at}" if cert.revoked_at else f"valid until {cert.not_after}"
                print(f"{cert.role:9} {cert.identity:30} {cert.serial:#x} {state}")
    except PkiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
