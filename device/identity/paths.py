"""Where the identity layer's files sit in the state folder (the gallery and master key paths come from
the config itself; the keyring's from ``device.identity.keyring.keyring_path``)."""

from __future__ import annotations

from pathlib import Path

from device.config import UnitConfig


def audit_log_path(config: UnitConfig) -> Path:
    return config.unit.state_dir / "audit.jsonl"


def audit_head_path(config: UnitConfig) -> Path:
    """Beside the master key, like the keyring: a state folder put back from the past lacks it."""
    return config.gallery.master_key_path.with_name("audit.head")


def claims_directory(config: UnitConfig) -> Path:
    return config.unit.state_dir / "claims"
