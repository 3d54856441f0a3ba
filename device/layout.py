"""Where a unit keeps its files, from its config: one place for the state and secrets folders' layout.

Two folders, as the installer makes them (``device init``): the **state** folder (``unit.state_dir``:
outbox, sealed gallery, audit log, claim drop, CPU file choices, provisioning markers, the event signing
key) and the **secrets** folder beside the master key (``gallery.master_key_path``'s folder: the
gallery's keyring and the audit head). The secrets folder keeps what must survive a state folder put
back from the past: a restored copy of the state folder cannot bring an old keyring or audit head with it.

Commands ask this module for a path instead of importing the publisher (and paho) or the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device.config import UnitConfig

AUDIT_LOG_FILE = "audit.jsonl"
AUDIT_HEAD_FILE = "audit.head"
KEYRING_FILE = "gallery.keys"
CLAIMS_DIR = "claims"
CPU_VARIANT_FILE = "cpu_variant.json"
PROVISIONED_DIR = "provisioned"
EVENT_KEY_FILE = "event-signing.key"


@dataclass(frozen=True)
class StateLayout:
    """Every file of one unit; the configurable ones (gallery, master key, outbox, event key) as set."""

    state_dir: Path
    master_key: Path
    gallery: Path
    outbox: Path
    event_key: Path

    @classmethod
    def from_config(cls, config: UnitConfig) -> StateLayout:
        state_dir = config.unit.state_dir
        return cls(
            state_dir=state_dir,
            master_key=config.gallery.master_key_path,
            gallery=config.gallery.path,
            outbox=config.mqtt.outbox_path,
            event_key=config.mqtt.event_key_path or state_dir / "secrets" / EVENT_KEY_FILE,
        )

    @property
    def secrets_dir(self) -> Path:
        return self.master_key.parent

    @property
    def keyring(self) -> Path:
        return self.secrets_dir / KEYRING_FILE

    @property
    def audit_log(self) -> Path:
        return self.state_dir / AUDIT_LOG_FILE

    @property
    def audit_head(self) -> Path:
        return self.secrets_dir / AUDIT_HEAD_FILE

    @property
    def claims(self) -> Path:
        return self.state_dir / CLAIMS_DIR

    @property
    def cpu_variant(self) -> Path:
        return self.state_dir / CPU_VARIANT_FILE

    @property
    def provisioned(self) -> Path:
        return self.state_dir / PROVISIONED_DIR
