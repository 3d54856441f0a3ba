"""Hostile files given to the unit's commands: one clear line and bounded memory, never a traceback.

Issue 14, finding 9: an 18000x18000 PNG of under 1 MB drove `identify` to 2 GB; a deeply nested TOML
config gave a RecursionError traceback (exit 1); `detect --out` wrote a face picture 0644.
"""

from __future__ import annotations

import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from gallery_helpers import Unit, init_unit, run_device

from device.vision.picture_header import picture_dimensions

PEAK_RSS_LIMIT_MB = 300


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(path: Path, side: int = 18_000) -> None:
    """A valid RGB PNG of side x side black pixels, compressed row by row (never held in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + RGB
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


def peak_rss_mb_of(command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Runs ``command`` under a fresh Python parent whose only child it is, and reads its peak RSS."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)\n"
        "print(json.dumps([r.returncode, r.stdout, r.stderr,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    import json

    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, timeout=360
    )
    code, stdout, stderr, max_rss_kb = json.loads(done.stdout)
    return subprocess.CompletedProcess(command, code, stdout, stderr), max_rss_kb / 1024


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


@pytest.mark.slow
def test_a_small_png_that_decodes_to_a_gigabyte_is_refused_in_one_line(unit: Unit, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    decompression_bomb_png(bomb)
    assert bomb.stat().st_size < 1_500_000
    assert picture_dimensions(bomb.read_bytes()[:64]) == (18_000, 18_000)

    result, peak_mb = peak_rss_mb_of(
        [sys.executable, "-m", "device", "--config", str(unit.config_path), "identify", str(bomb)]
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "18000x18000" in result.stdout + result.stderr
    assert "limits.max_image_pixels" in result.stdout + result.stderr
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.slow
def test_detect_refuses_the_same_picture(unit: Unit, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    decompression_bomb_png(bomb, side=9_000)
    result = run_device("--config", str(unit.config_path), "detect", str(bomb))
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.strip()][-1].startswith("error: ")
    assert "9000x9000" in result.stderr


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("jpeg", "jpg", (640, 480)),
        ("png", "png", (33, 17)),
        ("bmp", "bmp", (20, 30)),
        ("webp", "webp", (64, 48)),
    ],
)
def test_the_header_reader_agrees_with_the_decoder(
    tmp_path: Path, name: str, data: str, size: tuple[int, int]
) -> None:
    import cv2
    import numpy as np

    width, height = size
    ok, encoded = cv2.imencode(f".{data}", np.full((height, width, 3), 128, np.uint8))
    assert ok
    assert picture_dimensions(encoded.tobytes()) == (width, height)


def test_a_file_that_is_no_picture_is_refused_before_decoding() -> None:
    assert picture_dimensions(b"GIF89a" + bytes(100)) is None
    assert picture_dimensions(b"\xff\xd8\xff\xe0\x00\x01") is None  # a JPEG marker with a bad length


def test_a_deeply_nested_config_is_exit_2_and_one_line(tmp_path: Path) -> None:
    config = tmp_path / "unit.toml"
    config.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = run_device("--config", str(config), "config", "check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nested too deeply" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2  # file name + the problem


@pytest.mark.slow
def test_detect_out_writes_a_private_file_and_says_it_holds_a_face(unit: Unit, tmp_path: Path) -> None:
    from device.evaluation import fixtures

    out = tmp_path / "annotated.png"
    picture = fixtures.fixture_path("obama.jpg")
    result = run_device("--config", str(unit.config_path), "detect", str(picture), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "holds a face" in result.stderr


def test_init_on_a_world_writable_folder_fixes_it_and_says_so(tmp_path: Path) -> None:
    unit_dir = tmp_path / "unit"
    (unit_dir / "state").mkdir(parents=True)
    unit_dir.chmod(0o777)
    (unit_dir / "state").chmod(0o777)
    result = run_device("init", "--dir", str(unit_dir))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(unit_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE((unit_dir / "state").stat().st_mode) == 0o700
    assert "had mode 0777; changed to 0750" in result.stderr
    assert "had mode 0777; changed to 0700" in result.stderr


def test_init_refuses_someone_elses_world_writable_folder(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to hand the folder to another user")
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir()
    unit_dir.chmod(0o777)
    os.chown(unit_dir, 54321, 54321)
    result = run_device("init", "--dir", str(unit_dir))
    assert result.returncode == 1
    assert "belongs to user 54321" in result.stderr
    assert not (unit_dir / "secrets").exists()


@pytest.mark.slow
def test_a_root_run_unit_refuses_a_master_key_planted_by_another_user(unit: Unit) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the finding is about a unit run as root")
    key = unit.config.gallery.master_key_path
    os.chown(key, 54321, 54321)  # e.g. replaced by an unprivileged user who could write there
    result = run_device("--config", str(unit.config_path), "subjects", "list")
    assert result.returncode == 1
    assert "belongs to user 54321" in result.stderr
    os.chown(key.parent, 54321, 54321)  # the service user's own key in its own folder is fine
    assert run_device("--config", str(unit.config_path), "subjects", "list").returncode == 0
