"""A commander for tests: a fixed Ed25519 key, the trusted commanders file a unit reads, signed commands."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.events.signing import COMMANDERS, EventKey, register_key, signed_command

TEST_COMMANDER = "test-door"


def commander_key(seed: int = 1) -> EventKey:
    """A fixed key per seed, so a test can make a second, untrusted commander."""
    return EventKey(Ed25519PrivateKey.from_private_bytes(bytes((seed + i) % 256 for i in range(32))))


def trust_file(directory: Path, name: str = TEST_COMMANDER, key: EventKey | None = None) -> Path:
    """The unit's ``mqtt.command_keys`` file trusting ``name`` (the test commander by default)."""
    path = directory / "commanders.json"
    directory.mkdir(parents=True, exist_ok=True)
    register_key(path, name, (key or commander_key()).public_text, COMMANDERS)
    return path


def signed(
    name: str,
    subject_id: str | None = None,
    *,
    unit: str,
    request_id: str | None = None,
    issued: float | None = None,
    ttl_s: float = 30.0,
    key: EventKey | None = None,
    commander: str = TEST_COMMANDER,
) -> bytes:
    return signed_command(
        key or commander_key(),
        commander,
        name,
        unit=unit,
        subject_id=subject_id,
        ttl_s=ttl_s,
        now=issued,
        request_id=request_id,
    )
