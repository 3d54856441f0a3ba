"""Which config file a command uses, and where the models are when the config does not say.

Order: ``--config PATH`` > ``$ENTRANCE_CAMERA_CONFIG`` > ``/etc/entrance-camera/unit.toml`` (what the unit
installer writes). When none applies the command runs on the built-in defaults and says "no config
given" wherever that matters (a command that needs the unit's state refuses with that message).

The models folder defaults to the installed project's ``models/`` (next to the ``device`` package), never
to the current directory: ``device compare`` must work from wherever the installer happens to stand.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from device.atomicio import InputFileError, read_capped
from device.config import MAX_CONFIG_BYTES, ConfigError, UnitConfig, load_config

CONFIG_ENV = "ENTRANCE_CAMERA_CONFIG"
SYSTEM_CONFIG = Path("/etc/entrance-camera/unit.toml")
NO_CONFIG_SOURCE = "(no config given)"
NO_CONFIG_HINT = (
    f"no config given: pass --config PATH, set {CONFIG_ENV}=PATH, or install the unit "
    f"(which writes {SYSTEM_CONFIG})"
)


@dataclass(frozen=True)
class ConfigChoice:
    """The file a command's config comes from (None: built-in defaults) and why that one."""

    path: Path | None
    origin: str  # "--config", the environment variable's name, "system", or "none"


def choose_config(
    explicit: Path | None,
    environ: Mapping[str, str] | None = None,
    system_config: Path = SYSTEM_CONFIG,
) -> ConfigChoice:
    env = os.environ if environ is None else environ
    if explicit is not None:
        return ConfigChoice(explicit, "--config")
    from_env = env.get(CONFIG_ENV, "").strip()
    if from_env:
        return ConfigChoice(Path(from_env), CONFIG_ENV)
    if system_config.exists():
        return ConfigChoice(system_config, "system")
    return ConfigChoice(None, "none")


def installed_models_dir() -> Path | None:
    """The ``models/`` folder of the project this package was installed from, when it has one."""
    candidate = Path(__file__).resolve().parents[1] / "models"
    return candidate if (candidate / "manifest.json").is_file() else None


def _sets_models_dir(path: Path) -> bool:
    try:
        data = tomllib.loads(read_capped(path, MAX_CONFIG_BYTES, "the unit config").decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, InputFileError, RecursionError):
        return True  # load_config already reported it; do not second-guess
    models = data.get("models")
    return isinstance(models, dict) and "dir" in models


def load_chosen_config(choice: ConfigChoice, *, required: bool = False) -> UnitConfig:
    """The config of ``choice``; models.dir falls back to the installed models when the file (or the
    lack of one) leaves it unset. ``required``: refuse with "no config given" instead of defaults."""
    if choice.path is None and required:
        raise ConfigError(NO_CONFIG_SOURCE, [NO_CONFIG_HINT])
    if choice.path is not None and choice.origin != "--config" and not choice.path.exists():
        raise ConfigError(str(choice.path), [f"{choice.origin} names a file that does not exist"])
    config = load_config(choice.path)
    if choice.path is not None and _sets_models_dir(choice.path):
        return config
    shipped = installed_models_dir()
    if shipped is None:
        return config
    models = config.models.model_copy(update={"dir": shipped})
    return config.model_copy(update={"models": models})
