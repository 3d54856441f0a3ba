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
import re
import sys
from pathlib import Path

from device.atomicio import PRIVATE_DIR_MODE, create_exclusively, ensure_private_directory
from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry
from device.commands._gallery_cli import add_operator_option, default_operator, reports_gallery_errors
from device.config import UNIT_ID_PATTERN, load_config
from device.identity.audit import AuditLog, record_config_change
from device.identity.gallery import audit_log_path, config_digest, initialise_keyring
from device.identity.masterkey import generate_master_key

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
    add_operator_option(parser)


def shipped_models_dir() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / "models"
    return candidate if candidate.is_dir() else None


def config_text(unit_id: str, models_dir: Path | None) -> str:
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
        "",
        "[mqtt]",
        'outbox_path = "state/outbox.db"',
    ]
    if models_dir is not None:
        lines += ["", "[models]", f"dir = {_toml_string(str(models_dir.resolve()))}"]
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@reports_gallery_errors
def initialise_unit(args: argparse.Namespace) -> int:
    unit_dir: Path = args.dir
    if not re.match(UNIT_ID_PATTERN, args.unit_id):
        print(f"error: unit id {args.unit_id!r} must match {UNIT_ID_PATTERN}", file=sys.stderr)
        return EXIT_FAILURE
    config_path = unit_dir / CONFIG_NAME
    key_path = unit_dir / "secrets" / "master.key"
    for existing in (config_path, key_path):
        if existing.exists():
            print(f"error: {existing} already exists; init never overwrites a unit", file=sys.stderr)
            return EXIT_FAILURE
    models_dir = args.models_dir or shipped_models_dir()

    ensure_private_directory(unit_dir, UNIT_DIR_MODE)
    ensure_private_directory(key_path.parent, PRIVATE_DIR_MODE)
    ensure_private_directory(unit_dir / "state", PRIVATE_DIR_MODE)
    create_exclusively(config_path, config_text(args.unit_id, models_dir).encode(), CONFIG_MODE)
    master_key = generate_master_key(key_path)

    config = load_config(config_path)
    audit = AuditLog(audit_log_path(config), master_key)
    operator = args.operator or default_operator()
    audit.append("init", operator, {"unit": config.unit.id})
    audit.append("key_generated", operator, {"key_id": master_key.key_id})
    record_config_change(audit, config_digest(config), operator)
    # Generation 0 on record: from now on a missing keyring or gallery is an alarm, not a fresh unit.
    initialise_keyring(config.gallery.path, master_key)

    print(f"unit directory {unit_dir} (mode {UNIT_DIR_MODE:04o})")
    print(f"master key {key_path} (mode 0600, key id {master_key.key_id}); keep it on the unit only")
    print(f"state {config.unit.state_dir} (mode {PRIVATE_DIR_MODE:04o})")
    if models_dir is None:
        print("note: no models folder found; set [models] dir in the config", file=sys.stderr)
    print(config_path)
    return EXIT_OK
