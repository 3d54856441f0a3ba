"""The one TLS client context every MQTT client of the project uses: the unit's publisher, ``doctor``
and every consumer (events tail, door, commander, status reader).

Same checks and messages everywhere: all three files required (TLS is mandatory, and so is a client
certificate: the broker maps it to an identity and its ACL), TLS 1.2 or later, the broker's certificate
checked against the CA and its host name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from device.errors import UserError

MAX_TLS_FILE_BYTES = 1024 * 1024  # a CA bundle of a few hundred certificates


class TlsSetupError(UserError, ValueError):
    """The TLS files cannot work: one is not configured, missing, or not a certificate/key pair."""


def client_tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    if ca_file is None or cert_file is None or key_file is None:
        raise TlsSetupError("the CA, certificate and key files are all required (TLS is mandatory)")
    for path in (ca_file, cert_file, key_file):
        if not path.is_file():
            raise TlsSetupError(f"TLS file not found: {path}")
        size = path.stat().st_size
        if size > MAX_TLS_FILE_BYTES:  # OpenSSL would read all of it: a 3 GB "certificate" is refused here
            raise TlsSetupError(f"TLS file {path} is {size} bytes, more than the 1 MiB a PEM file may be")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (ssl.SSLError, OSError) as error:
        raise TlsSetupError(f"cannot load the CA certificate {ca_file}: {error}") from error
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as error:
        raise TlsSetupError(f"cannot load the client certificate {cert_file}: {error}") from error
    return context


def certificate_common_name(cert_file: Path) -> str:
    """The CN of a PEM certificate: the identity the broker maps it to (``use_identity_as_username``);
    "" when the file has none or cannot be read (the TLS setup reports that file on its own)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return ""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
