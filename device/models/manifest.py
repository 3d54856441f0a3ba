"""The models manifest (``models/manifest.json``): which files ship, what they are, and their sha256.

The unit loads a model file only through :func:`verified_path`, so a file that was swapped or damaged on
disk is refused with a clear :class:`ModelFileError` instead of being run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.errors import UserError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1

Variant = Literal["float", "int8", "edgetpu"]
VARIANTS: tuple[Variant, ...] = ("float", "int8", "edgetpu")
HASH_CHUNK = 1 << 20


class ModelFileError(UserError):
    """A model file or the manifest is missing, malformed or does not match its recorded sha256."""


class ModelFile(BaseModel):
    # Each helper owns its own entry and may record more facts per file (size, op counts, ...).
    model_config = ConfigDict(extra="allow", frozen=True)

    path: str = Field(min_length=1, description="relative to the models folder")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="None only for a file that is built elsewhere (the Edge TPU compile) and not shipped yet",
    )


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: str = Field(min_length=1)
    files: dict[Variant, ModelFile]
    input: dict[str, Any] = Field(default_factory=dict)
    outputs: list[dict[str, Any]] | dict[str, Any] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: int = Field(alias="schema")
    models: dict[str, ModelEntry]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(models_dir: Path) -> Manifest:
    path = models_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"no model manifest at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"cannot read the model manifest {path}: {error}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise ModelFileError(f"invalid model manifest {path}: {problems}") from None
    if manifest.schema_ != MANIFEST_SCHEMA:
        raise ModelFileError(
            f"model manifest {path} has schema {manifest.schema_}, this unit reads schema {MANIFEST_SCHEMA}"
        )
    return manifest


def model_entry(manifest: Manifest, name: str, models_dir: Path) -> ModelEntry:
    try:
        return manifest.models[name]
    except KeyError:
        known = ", ".join(sorted(manifest.models)) or "none"
        raise ModelFileError(
            f"model {name!r} is not in {models_dir / MANIFEST_NAME} (known: {known})"
        ) from None


def file_path(models_dir: Path, model_file: ModelFile) -> Path:
    relative = Path(model_file.path)
    # A manifest entry must not point outside the models folder.
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelFileError(f"model path {model_file.path!r} must be relative, inside {models_dir}")
    return models_dir / relative


def verify_file(models_dir: Path, name: str, variant: Variant, model_file: ModelFile) -> Path:
    """The file's path once its sha256 matches the manifest; ModelFileError with the reason otherwise."""
    path = file_path(models_dir, model_file)
    label = f"{name} ({variant}) {path}"
    if model_file.sha256 is None:
        raise ModelFileError(f"{label}: the manifest records no sha256, refusing to load it")
    if not path.is_file():
        raise ModelFileError(f"{label}: file is missing")
    actual = sha256_file(path)
    if actual != model_file.sha256:
        raise ModelFileError(
            f"{label}: sha256 {actual} does not match the manifest ({model_file.sha256}); "
            "the file was changed or damaged, refusing to load it"
        )
    return path


def verified_path(models_dir: Path, name: str, variant: Variant) -> Path:
    """Load the manifest, find ``name``'s ``variant`` file and check its sha256."""
    manifest = load_manifest(models_dir)
    entry = model_entry(manifest, name, models_dir)
    model_file = entry.files.get(variant)
    if model_file is None:
        raise ModelFileError(f"model {name!r} has no {variant} file in the manifest")
    return verify_file(models_dir, name, variant, model_file)
