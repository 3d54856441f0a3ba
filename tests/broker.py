"""The real Mosquitto the tests use: deploy/broker/local.py's LocalBroker plus certificates that
must be refused (expired, from an untrusted CA). See LocalBroker for the process and PKI handling.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from deploy.broker.local import HOST, LocalBroker, free_port, mosquitto_binary
from deploy.broker.pki import CertFiles, Pki

__all__ = ["HOST", "MosquittoBroker", "free_port", "mosquitto_binary"]


class MosquittoBroker(LocalBroker):
    """LocalBroker in a test's tmp dir (fresh PKI each time), with the bad certificates tests need."""

    def expired_cert_for(self, identity: str) -> tuple[Path, Path]:
        """A certificate from the right CA whose validity ended yesterday (kept apart from cert_for's)."""
        target = self.root / "expired"
        files = self.pki.issue_client(
            identity,
            self.role_of(identity),
            days=1,
            not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
            files=CertFiles(target / f"{identity}.crt", target / f"{identity}.key"),
        )
        return files.cert, files.key

    def foreign_cert_for(self, identity: str) -> tuple[Path, Path]:
        """A certificate with the right CN from a CA the broker does not trust."""
        foreign = Pki(self.root / "foreign-pki")
        if not foreign.ca_cert_path.exists():
            foreign.init(ca_name="untrusted CA")
        files = foreign.issue_client(identity, self.role_of(identity))
        return files.cert, files.key
