"""Shared helpers for the gallery tests: a real unit directory, real keys, real random templates."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from device.cli import main
from device.config import UnitConfig, load_config
from device.identity.gallery_records import SubjectInfo
from device.identity.gallery_store import EnrolRequest, GalleryStore, normalise_templates


@dataclass
class Unit:
    dir: Path
    config_path: Path

    @property
    def config(self) -> UnitConfig:
        return load_config(self.config_path)

    def store(self) -> GalleryStore:
        return GalleryStore.from_config(self.config)


def init_unit(tmp_path: Path) -> Unit:
    unit_dir = tmp_path / "unit"
    assert main(["init", "--dir", str(unit_dir), "--operator", "installer"]) == 0
    return Unit(unit_dir, unit_dir / "unit.toml")


def random_templates(count: int, seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return normalise_templates(rng.normal(size=(count, 128)).astype(np.float32))


def enrol_random(
    store: GalleryStore, name: str | None, seed: int, count: int = 3, consent: str = "FORM-1"
) -> tuple[SubjectInfo, NDArray[np.float32]]:
    templates = random_templates(count, seed)
    info = store.enrol(
        EnrolRequest(
            name=name,
            templates=templates,
            consent_reference=consent,
            operator="tester",
            purpose_version="v1",
        )
    )
    return info, templates


def run_device(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", *args], capture_output=True, text=True, timeout=120
    )


def state_file_bytes(*directories: Path) -> dict[Path, bytes]:
    """Every file under the given directories, raw (gallery, temp files, locks, audit log, journals)."""
    found: dict[Path, bytes] = {}
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                found[path] = path.read_bytes()
    return found
