"""Bad gallery files and keys give a clear error; the running unit's view goes to "no gallery" mode."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, run_device

from device.identity.gallery_records import GalleryUnreadableError
from device.identity.live_gallery import LiveGallery
from device.identity.masterkey import MasterKeyError, generate_master_key, load_master_key


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    unit = init_unit(tmp_path)
    enrol_random(unit.store(), "Tamper Target", seed=1)
    enrol_random(unit.store(), "Second Person", seed=2)
    return unit


def flip_byte(offset_from_end: int) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        index = len(data) - offset_from_end
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]

    return change


def truncate_to(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * fraction)]


def bump_generation(data: bytes) -> bytes:
    return data.replace(b'"generation": ', b'"generation": 9', 1)


CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "flipped byte in the tag": (flip_byte(3), "integrity check"),
    "flipped byte in the ciphertext": (flip_byte(200), "integrity check"),
    "header edited": (bump_generation, "integrity check"),
    "truncated to half": (truncate_to(0.5), "integrity check"),
    "truncated inside the nonce": (lambda data: data[: data.index(b"\n") + 5], "truncated"),
    "truncated inside the header": (truncate_to(0.01), "not a gallery file"),
    "empty file": (lambda data: b"", "not a gallery file"),
    "not a gallery at all": (lambda data: b"SQLite format 3\x00" + bytes(100), "not a gallery file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_gallery_gives_a_clear_error_and_no_gallery_mode(unit: Unit, case: str) -> None:
    change, message = CASES[case]
    path = unit.config.gallery.path
    path.write_bytes(change(path.read_bytes()))

    with pytest.raises(GalleryUnreadableError, match=message):
        unit.store().load()

    view = LiveGallery.from_config(unit.config)
    templates, ids = view.templates()
    assert templates.shape == (0, 128) and ids == []
    assert view.state == "no_gallery"
    health = view.health()
    assert health["gallery_state"] == "no_gallery"
    assert message in health["gallery_error"]


def test_the_cli_reports_a_damaged_gallery_in_one_line_without_a_traceback(unit: Unit) -> None:
    path = unit.config.gallery.path
    path.write_bytes(flip_byte(40)(path.read_bytes()))
    result = run_device("--config", str(unit.config_path), "subjects", "list")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "failed its integrity check" in result.stderr


def test_a_different_master_key_is_named_as_the_problem(unit: Unit, tmp_path: Path) -> None:
    key_path = unit.config.gallery.master_key_path
    key_path.unlink()
    generate_master_key(key_path)
    with pytest.raises(GalleryUnreadableError, match="this unit's master key"):
        unit.store().load()
    assert LiveGallery.from_config(unit.config).state == "no_gallery"


def test_a_key_readable_by_others_is_refused(unit: Unit) -> None:
    key_path = unit.config.gallery.master_key_path
    key_path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="0644"):
        load_master_key(key_path)
    result = run_device("--config", str(unit.config_path), "subjects", "list")
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
    view = LiveGallery.from_config(unit.config)
    assert view.state == "no_gallery"
    key_path.chmod(0o600)  # the view recovers once the key file is fixed, without a restart
    assert view.state == "ok"
    assert len(view.templates()[1]) == 6


@pytest.mark.parametrize(
    "content",
    [b"", b"ecmk1:not-base64!!\n", b"ecmk1:" + b"QUJD" + b"\n", b"-----BEGIN PRIVATE KEY-----\n"],
    ids=["empty", "not base64", "too short", "wrong format"],
)
def test_a_malformed_key_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    key_path = tmp_path / "master.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(MasterKeyError, match=str(key_path)):
        load_master_key(key_path)


def test_a_missing_key_means_no_gallery_not_a_crash(unit: Unit) -> None:
    unit.config.gallery.master_key_path.unlink()
    view = LiveGallery.from_config(unit.config)
    assert view.state == "no_gallery"
    assert "does not exist" in view.health()["gallery_error"]


def test_init_never_overwrites_an_existing_key(unit: Unit) -> None:
    key_before = unit.config.gallery.master_key_path.read_bytes()
    result = run_device("init", "--dir", str(unit.dir))
    assert result.returncode == 1
    assert "never overwrites" in result.stderr
    assert unit.config.gallery.master_key_path.read_bytes() == key_before
    with pytest.raises(MasterKeyError, match="never overwritten"):
        generate_master_key(unit.config.gallery.master_key_path)
