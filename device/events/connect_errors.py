"""Plain-language reasons for a failed broker connection, naming host, port and the file at fault.

Shared by the publisher (the run-time error) and ``device doctor`` so that both give the same hint.
"""

from __future__ import annotations

import socket
import ssl

from device.config import MqttSection
from device.events.tls import certificate_common_name


def explain_connect_error(error: BaseException, settings: MqttSection) -> tuple[str, str]:
    """(what happened, the fix) for a failed TLS connection, naming host, port and the file at fault.
    Shared by doctor and the publisher's run-time error, so both give the same hint."""
    where = f"{settings.host}:{settings.port}"
    tls = settings.tls
    if isinstance(error, ssl.SSLCertVerificationError):
        if "hostname" in str(error) or "IP address mismatch" in str(error):
            return (
                f"the broker at {where} presents a certificate for another name ({error.verify_message})",
                "set mqtt.host to the name in the broker's certificate",
            )
        return (
            f"the broker at {where} has a certificate that does not chain to mqtt.tls.ca_file {tls.ca_file} "
            f"({error.verify_message})",
            "use the CA file of this broker's PKI (ca.crt), not another one",
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        if "UNKNOWN_CA" in reason.upper() or "CERTIFICATE" in reason.upper():
            return (
                f"the broker at {where} refused the unit's certificate {tls.cert_file} ({reason})",
                "use a certificate issued by the broker's CA (and not revoked)",
            )
        return (f"TLS with {where} failed: {reason}", "check that mqtt.port is the broker's TLS port (8883)")
    if isinstance(error, ConnectionRefusedError):
        return (f"nothing accepts connections on {where}", "start the broker, or fix mqtt.host / mqtt.port")
    if isinstance(error, socket.gaierror):
        return (f"cannot resolve {settings.host}", "fix mqtt.host")
    if isinstance(error, TimeoutError | socket.timeout):
        return (f"no answer from {where} in time", "check the network path and firewall to the broker")
    return (f"cannot connect to {where}: {error}", "check mqtt.host, mqtt.port and the network")


def explain_refusal(reason: str, settings: MqttSection, unit_id: str) -> tuple[str, str]:
    """(what happened, the fix) when the broker answers but refuses the unit (CONNACK or PUBACK, e.g.
    0x87 Not authorized): the certificate's CN against ``unit.id``, as ``device doctor``'s certificate
    check puts it, since the broker's ACL knows the unit only by that CN."""
    where = f"{settings.host}:{settings.port}"
    cert = settings.tls.cert_file
    cn = certificate_common_name(cert) if cert is not None else ""
    if cn and cn != unit_id:
        return (
            f"the broker at {where} refused the unit ({reason}): its certificate {cert} is issued to "
            f"{cn!r} but unit.id is {unit_id!r}, and the broker's ACL lets {cn!r} write only "
            f"{settings.topic_prefix}/{cn}/...",
            f"set [unit] id = {cn!r}, or issue a certificate for {unit_id!r}; `device doctor` checks both",
        )
    named = f"issued to {cn!r} = unit.id" if cn else "the certificate's name (CN) must be the unit id"
    return (
        f"the broker at {where} refused the unit ({reason}) with certificate {cert} ({named})",
        f"the certificate must be issued by the broker's CA, and the broker's ACL must list {unit_id!r} "
        "(render it again after issuing the certificate); `device doctor` checks the certificate",
    )
