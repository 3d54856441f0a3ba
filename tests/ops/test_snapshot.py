"""`device snapshot --annotate`: one local picture (0600) from the unit's camera with the faces boxed and
the zone drawn, and a warning that it holds faces (issue 17). Real detector, a picture folder as camera."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from gallery_helpers import init_unit

from device.cli import main
from device.ops.snapshot import ZONE_COLOUR


def unit_with_camera(tmp_path: Path, face_images: dict[str, Path], zone: str = "") -> Path:
    unit = init_unit(tmp_path)
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copy(face_images["obama.jpg"], camera / "0001.jpg")
    with unit.config_path.open("a") as config:
        config.write(f'\n[capture]\nbackend = "file"\nsource = "{camera}"\n')
        if zone:
            config.write(f"\n[detection]\nzone = {zone}\n")
    return unit.config_path


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_snapshot_boxes_the_face_draws_the_zone_and_is_private(
    tmp_path: Path, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = unit_with_camera(
        tmp_path, face_images, zone="[[0.05, 0.05], [0.95, 0.05], [0.95, 0.95], [0.05, 0.95]]"
    )
    out = tmp_path / "aim.png"
    capsys.readouterr()
    assert main(["snapshot", "--annotate", "--out", str(out), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "1 face(s) in the configured zone" in captured.out
    assert "shows the entrance and the faces" in captured.err and "never published" in captured.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    drawn = cv2.imread(str(out))[:, :, ::-1]
    original = cv2.imread(str(face_images["obama.jpg"]))[:, :, ::-1]
    assert drawn.shape == original.shape
    green = np.all(drawn == (0, 255, 0), axis=2).sum()
    amber = np.all(drawn == ZONE_COLOUR, axis=2).sum()
    assert green > 100 and amber > 100  # the face box and the zone outline are there


def test_a_plain_snapshot_is_the_frame_itself(tmp_path: Path, face_images: dict[str, Path]) -> None:
    config = unit_with_camera(tmp_path, face_images)
    out = tmp_path / "plain.png"
    assert main(["snapshot", "--out", str(out), "--config", str(config)]) == 0
    drawn = cv2.imread(str(out))
    original = cv2.imread(str(face_images["obama.jpg"]))
    assert np.array_equal(drawn, original)


def test_a_missing_camera_is_an_error_and_writes_nothing(
    tmp_path: Path, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = unit_with_camera(tmp_path, face_images)
    shutil.rmtree(tmp_path / "camera")
    out = tmp_path / "aim.png"
    assert main(["snapshot", "--annotate", "--out", str(out), "--config", str(config)]) == 1
    assert "error: capture file" in capsys.readouterr().err
    assert not out.exists()
