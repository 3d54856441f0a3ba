"""Where a unit keeps its files, from its config: one place for the state and secrets folders' layout.

Two folders, as the installer makes them (``device init``): the **state** folder (``unit.state_dir``:
outbox, sealed gallery, audit log, claim drop, CPU file choices, provisioning markers, the used command
record, and the event signing key in its ``signing`` folder) and the **secrets** folder beside the master
key (the gallery's keyring and the audit head). The secrets folder keeps what must survive a state folder
put back from the past: a restored copy of the state folder cannot bring an old keyring or audit head
with it. Only the secrets folder is called ``secrets``: the event key's folder inside the state folder
was ``secrets`` too until it was renamed ``signing``, and a unit set up before finds its key moved
there on first use (``move_legacy_event_key``).

Commands ask this module for a path instead of importing the publisher (and paho) or the gallery.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from device.config import UnitConfig

log = logging.getLogger(__name__)

AUDIT_LOG_FILE = "audit.jsonl"
AUDIT_HEAD_FILE = "audit.head"
KEYRING_FILE = "gallery.keys"
CLAIMS_DIR = "claims"
CPU_VARIANT_FILE = "cpu_variant.json"
PROVISIONED_DIR = "provisioned"
EVENT_KEY_FILE = "event-signing.key"
EVENT_KEY_DIR = "signing"  # inside the state folder; not "secrets", the name of the master key's folder
LEGACY_EVENT_KEY_DIR = "secrets"  # its name before: two folders called secrets were one too many
USED_COMMANDS_FILE = "commands-used.jsonl"


@dataclass(frozen=True)
class StateLayout:
    """Every file of one unit; the configurable ones (gallery, master key, outbox, event key) as set."""

    state_dir: Path
    master_key: Path
    gallery: Path
    outbox: Path
    event_key: Path
    legacy_event_key: Path | None = None  # where a unit set up before the rename keeps it

    @classmethod
    def from_config(cls, config: UnitConfig) -> StateLayout:
        state_dir = config.unit.state_dir
        return cls(
            state_dir=state_dir,
            master_key=config.gallery.master_key_path,
            gallery=config.gallery.path,
            outbox=config.mqtt.outbox_path,
            event_key=config.mqtt.event_key_path or state_dir / EVENT_KEY_DIR / EVENT_KEY_FILE,
            legacy_event_key=(
                None if config.mqtt.event_key_path else state_dir / LEGACY_EVENT_KEY_DIR / EVENT_KEY_FILE
            ),
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
    def used_commands(self) -> Path:
        """The signed commands' request ids that have acted, kept until each expires (replay guard)."""
        return self.state_dir / USED_COMMANDS_FILE

    @property
    def provisioned(self) -> Path:
        return self.state_dir / PROVISIONED_DIR


def move_legacy_event_key(layout: StateLayout) -> bool:
    """Moves the event signing key of a unit set up before the folder was renamed (``<state>/secrets``
    to ``<state>/signing``), once, saying so: the consumers know the unit by this key, so it is moved,
    never made anew. True when it moved it. A key at the new place wins; the old one is then left, named
    in a warning, for the operator to remove."""
    old, new = layout.legacy_event_key, layout.event_key
    if old is None or not old.exists():
        return False
    if new.exists():
        log.warning("%s is not used: the event signing key is %s (remove the old one)", old, new)
        return False
    new.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old.rename(new)  # same file system (both in the state folder): atomic, the key never copied
    fd = os.open(new.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        old.parent.rmdir()  # only when empty
    log.warning(
        "moved the event signing key from %s to %s: the state folder's key folder is now called %r "
        "(the master key's folder keeps the name %r)",
        old,
        new,
        EVENT_KEY_DIR,
        LEGACY_EVENT_KEY_DIR,
    )
    return True
