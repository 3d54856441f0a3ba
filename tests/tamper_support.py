"""The attacker's smallest change to a file: one bit, in the middle, where the weights of a model are."""

from __future__ import annotations

from pathlib import Path


def flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
