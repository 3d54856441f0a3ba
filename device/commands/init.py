"""``device init --dir DIR``: a working unit directory with a config, a new master key and a state dir.

Layout (modes are set explicitly, whatever the umask):

    DIR/               0750
      unit.toml        0640  config (no secrets in it; the key is referenced by path)
      secrets/         0700
        master.key     0600  unit master key (never in a repo, never copied off the unit)
      state/           0700  encrypted gallery, audit log, outbox, claims

The config's path is printed as the last line so scripts can capture it.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import tomllib
from pathlib import Path

from device.atomicio import PRIVATE_DIR_MODE, create_exclusively, ensure_private_directory
from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry
from device.commands._gallery_cli import add_operator_option, operator_of
from device.config import UNIT_ID_PATTERN, UNIT_ID_RULE, load_config
from device.identity.audit import AuditLog, record_config_change
from device.identity.gallery_store import config_digest, initialise_keyring
from device.identity.masterkey import MasterKeyError, generate_master_key
from device.layout import StateLayout

UNIT_DIR_MODE = 0o750
CONFIG_MODE = 0o640
CONFIG_NAME = "unit.toml"


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "init", initialise_unit, "create a unit directory: config, master key (0600) and state dir"
    )
    parser.add_argument("--dir", type=Path, required=True, metavar="DIR", help="unit directory to create")
    parser.add_argument("--unit-id", default="demo-unit", help="unit name, also its MQTT identity")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder with the model files and manifest (default: the project's models/ folder)",
    )
    parser.add_argument(
        "--key-source",
        choices=["file", "host-credential", "tpm2"],
        default="file",
        help="protect the master key as a plain 0600 file, or sealed with systemd-creds to the host key "
        "or the unit's TPM (README: what each protects against)",
    )
    parser.add_argument(
        "--mqtt",
        type=Path,
        default=None,
        metavar="FILE",
        help="a TOML file with the unit's [mqtt] section (e.g. the one `make dev-broker` writes) to use",
    )
    parser.add_argument(
        "--command-keys",
        type=Path,
        default=None,
        metavar="FILE",
        help="the trusted commanders file (`device command key --register`), as mqtt.command_keys",
    )
    add_operator_option(parser)


def shipped_models_dir() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / "models"
    return candidate if candidate.is_dir() else None


DEFAULT_MQTT_LINES = ["[mqtt]", 'outbox_path = "state/outbox.db"']


def mqtt_section_text(path: Path) -> str:
    """The [mqtt] tables of ``path``, checked to be nothing else and a valid [mqtt] section."""
    from device.atomicio import read_capped
    from device.config import MAX_CONFIG_BYTES, ConfigError, MqttSection
    from device.lab.demo import toml_text

    try:
        data = tomllib.loads(read_capped(path, MAX_CONFIG_BYTES, "the [mqtt] file").decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as error:
        raise ConfigError(str(path), [f"cannot read it as TOML: {error}"]) from None
    others = sorted(set(data) - {"mqtt"})
    if others or not isinstance(data.get("mqtt"), dict):
        raise ConfigError(
            str(path), [f"must hold only an [mqtt] section (found: {', '.join(others) or 'none'})"]
        )
    section = {"outbox_path": "state/outbox.db", **data["mqtt"]}
    try:
        MqttSection.model_validate(section)
    except ValueError as error:
        raise ConfigError(str(path), [str(error)]) from None
    return toml_text({"mqtt": section})


def config_text(
    unit_id: str,
    models_dir: Path | None,
    mqtt_text: str | None = None,
    key_source: str = "file",
    command_keys: Path | None = None,
) -> str:
    mqtt_lines = (
        mqtt_text.rstrip("\n").splitlines() if mqtt_text else ["[mqtt]", 'outbox_path = "state/outbox.db"']
    )
    if command_keys is not None:
        # Right under [mqtt]: the section's own keys come before its [mqtt.tls] table.
        at = mqtt_lines.index("[mqtt]") + 1
        mqtt_lines.insert(at, f"command_keys = {_toml_string(str(command_keys.resolve()))}")
    lines = [
        "# Unit config written by `device init`. Every key not set here has its default",
        "# (firmware_config/unit.defaults.toml). Relative paths are relative to this file.",
        "",
        "[unit]",
        f'id = "{unit_id}"',
        'state_dir = "state"',
        "",
        "[gallery]",
        'path = "state/gallery.enc"',
        'master_key_path = "secrets/master.key"',
        f'key_source = "{key_source}"',
        "",
        *mqtt_lines,
    ]
    if models_dir is not None:
        lines += ["", "[models]", f"dir = {_toml_string(str(models_dir.resolve()))}"]
    return "\n".join(lines) + "\n"


def secure_existing_directory(directory: Path, mode: int) -> str | None:
    """An existing folder gets ``mode`` when it is ours (said on stderr); someone else's is refused,
    whatever its mode: its owner could swap the key or the config init writes there (issue 25)."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return None
    current = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        return (
            f"{directory} has mode {current:04o} and belongs to user {info.st_uid}; "
            "fix it or use another folder"
        )
    if current == mode:
        return None
    directory.chmod(mode)
    print(f"note: {directory} had mode {current:04o}; changed to {mode:04o}", file=sys.stderr)
    return None


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def initialise_unit(args: argparse.Namespace) -> int:
    unit_dir: Path = args.dir
    if not re.match(UNIT_ID_PATTERN, args.unit_id):
        print(f"error: unit id {args.unit_id!r} must be {UNIT_ID_RULE}", file=sys.stderr)
        return EXIT_FAILURE
    config_path = unit_dir / CONFIG_NAME
    key_path = unit_dir / "secrets" / "master.key"
    for existing in (config_path, key_path):
        if existing.exists():
            print(f"error: {existing} already exists; init never overwrites a unit", file=sys.stderr)
            return EXIT_FAILURE
    models_dir = args.models_dir or shipped_models_dir()
    mqtt_text = mqtt_section_text(args.mqtt) if getattr(args, "mqtt", None) is not None else None
    command_keys: Path | None = getattr(args, "command_keys", None)
    if command_keys is not None and not command_keys.is_file():
        print(f"error: no trusted commanders file {command_keys}: `device command key --register` makes it",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE

    for directory, mode in (
        (unit_dir, UNIT_DIR_MODE),
        (key_path.parent, PRIVATE_DIR_MODE),
        (unit_dir / "state", PRIVATE_DIR_MODE),
    ):
        problem = secure_existing_directory(directory, mode)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_FAILURE
        ensure_private_directory(directory, mode)
    create_exclusively(
        config_path,
        config_text(args.unit_id, models_dir, mqtt_text, args.key_source, command_keys).encode(),
        CONFIG_MODE,
    )
    try:
        master_key = generate_master_key(key_path, args.key_source)
    except MasterKeyError as error:
        config_path.unlink()  # nothing half-made stays behind
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE

    config = load_config(config_path)
    layout = StateLayout.from_config(config)
    audit = AuditLog.of_unit(layout, master_key)
    operator = operator_of(args)
    audit.append("init", operator, {"unit": config.unit.id})
    audit.append("key_generated", operator, {"key_id": master_key.key_id})
    record_config_change(audit, config_digest(config), operator)
    # Generation 0 on record: from now on a missing keyring or gallery is an alarm, not a fresh unit.
    initialise_keyring(layout.keyring, master_key)

    print(f"unit directory {unit_dir} (mode {UNIT_DIR_MODE:04o})")
    print(f"master key {key_path} (mode 0600, key id {master_key.key_id}); keep it on the unit only")
    print(f"state {config.unit.state_dir} (mode {PRIVATE_DIR_MODE:04o})")
    if models_dir is None:
        print("note: no models folder found; set [models] dir in the config", file=sys.stderr)
    print(config_path)
    return EXIT_OK
