from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.evaluation import fixtures
from device.evaluation.fixtures import FACE_RECOGNITION_SDIST, FixtureError


def test_every_pinned_image_is_in_the_cache_with_its_pinned_digest(face_images: dict[str, Path]) -> None:
    for archive in fixtures.ARCHIVES:
        for name, member in archive.members.items():
            assert hashlib.sha256(face_images[name].read_bytes()).hexdigest() == member.sha256


FACE_RECOGNITION_PHOTOS = (
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "biden.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
)
FACE_API_SAMPLES = tuple(f"sample{i}.jpg" for i in range(1, 7))


def test_the_face_recognition_test_images_are_all_there(face_images: dict[str, Path]) -> None:
    assert set(FACE_RECOGNITION_PHOTOS) <= set(face_images)
    assert set(FACE_API_SAMPLES) <= set(face_images)


def test_face_images_lists_every_photo_once_in_the_order_the_seeded_calibrations_walk() -> None:
    # The model builds and the PAD evaluation draw seeded random crops photo by photo: another order
    # would change what they measure and build.
    assert fixtures.FACE_IMAGES == FACE_RECOGNITION_PHOTOS + FACE_API_SAMPLES


def test_fixtures_live_outside_the_repository(face_images: dict[str, Path]) -> None:
    repo = Path(__file__).resolve().parent.parent
    for path in face_images.values():
        assert repo not in path.resolve().parents


def test_images_decode_as_rgb(face_images: dict[str, Path]) -> None:
    image = fixtures.load_rgb("obama.jpg")
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3


@pytest.mark.slow
def test_a_damaged_cached_file_is_fetched_again(tmp_path: Path, face_images: dict[str, Path]) -> None:
    # Seed a private cache from the shared one, then damage one file: ensure_archive must restore it.
    target = fixtures.archive_dir(FACE_RECOGNITION_SDIST, tmp_path)
    target.mkdir(parents=True)
    for name in FACE_RECOGNITION_SDIST.members:
        (target / name).write_bytes(face_images[name].read_bytes())
    (target / "biden.jpg").write_bytes(b"not a jpeg")
    restored = fixtures.ensure_archive(FACE_RECOGNITION_SDIST, tmp_path)
    digest = hashlib.sha256(restored["biden.jpg"].read_bytes()).hexdigest()
    assert digest == FACE_RECOGNITION_SDIST.members["biden.jpg"].sha256


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_an_archive_that_does_not_match_its_pin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = fixtures.Archive(
        registry=FACE_RECOGNITION_SDIST.registry,
        package=FACE_RECOGNITION_SDIST.package,
        version=FACE_RECOGNITION_SDIST.version,
        sha256="0" * 64,
        licence="MIT",
        members={},
    )
    with pytest.raises(FixtureError, match="does not match the pin"):
        fixtures.download_archive(tampered)


def test_an_unreachable_registry_is_a_clear_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def never_answers(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd="pip download", timeout=1)

    monkeypatch.setattr(fixtures.subprocess, "run", never_answers)
    with pytest.raises(FixtureError, match="did not answer"):
        fixtures.download_archive(FACE_RECOGNITION_SDIST, timeout_s=1)


def test_unknown_fixture_names_list_the_known_ones() -> None:
    with pytest.raises(FixtureError, match=r"known: .*obama\.jpg"):
        fixtures.fixture_path("nobody.jpg")


def test_astronaut_comes_from_scikit_image() -> None:
    image = fixtures.astronaut_rgb()
    assert image.shape == (512, 512, 3)


WITHOUT_SCIKIT_IMAGE = (
    "import sys; sys.modules['skimage'] = None; from device.cli import main; sys.exit(main(sys.argv[1:]))"
)


def device_without_scikit_image(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on a machine without the dev extra (a unit): scikit-image cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SCIKIT_IMAGE, *args], capture_output=True, text=True, timeout=300
    )


def test_device_fixtures_lists_the_astronaut_where_it_comes_from_as_the_readme_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from device.cli import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`make fixtures` fetches the first two and lists all three" in readme
    assert "The astronaut is not fetched or cached" in readme
    assert main(["fixtures"]) == 0
    out = capsys.readouterr().out
    assert "\n  astronaut(), read from the installed package (not cached)\n" in out
    assert not any(path.name.startswith("astronaut") for path in fixtures.cache_root().rglob("*"))

    missing = device_without_scikit_image("fixtures")
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.splitlines()[-1].startswith("scikit-image astronaut(): not available here")


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_calibrate_says_when_the_astronaut_is_missing_from_the_default_strangers(tmp_path: Path) -> None:
    from gallery_helpers import enrol_random, init_unit

    unit = init_unit(tmp_path)
    enrol_random(unit.store(), "Ada Resident", seed=1)
    result = device_without_scikit_image(
        "--config", str(unit.config_path), "calibrate", "--target-far", "0.5"
    )
    assert result.returncode == 0, result.stderr
    assert "note: the default strangers are without scikit-image's astronaut" in result.stderr
