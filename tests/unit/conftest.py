"""Fixtures of the pipeline tests: the shipped models, loaded once per test module."""

from __future__ import annotations

import pytest
from pipeline_support import shipped_stages

from device.vision.faces import FaceAnalyzer, Stages


@pytest.fixture(scope="module")
def stages() -> Stages:
    return shipped_stages()


@pytest.fixture(scope="module")
def analyzer(stages: Stages) -> FaceAnalyzer:
    return FaceAnalyzer.from_stages(stages)
