"""``device backup OUT`` and ``device restore IN``: gallery backups that keep erasures (backup.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cli import EXIT_OK, CommandRegistry, config_from_args
from device.commands._gallery_cli import add_operator_option, operator_of
from device.identity.gallery_store import GalleryStore


def register(commands: CommandRegistry) -> None:
    backup = commands.add(
        "backup", make_backup, "seal the gallery into a backup file only this unit can restore"
    )
    backup.add_argument("out", type=Path, help="backup file to write (must not exist)")
    add_operator_option(backup)
    restore = commands.add(
        "restore", restore_backup, "put a backup's subjects back (refused if a forget or purge came after it)"
    )
    restore.add_argument("source", type=Path, metavar="IN", help="a file written by `device backup`")
    restore.add_argument(
        "--replace-newer",
        action="store_true",
        help="also when the gallery holds subjects enrolled after the backup (they are removed)",
    )
    add_operator_option(restore)


def make_backup(args: argparse.Namespace) -> int:
    store = GalleryStore.from_config(config_from_args(args))
    info = store.backup(args.out, operator_of(args))
    print(
        f"backup {info.backup_id}: {info.subjects} subject(s), gallery generation {info.generation}, "
        f"written to {args.out} (mode 0600; opens only on this unit, and only until the next forget or purge)"
    )
    return EXIT_OK


def restore_backup(args: argparse.Namespace) -> int:
    store = GalleryStore.from_config(config_from_args(args))
    restored = store.restore(args.source, operator_of(args), replace_newer=args.replace_newer)
    print(f"restored {len(restored)} subject(s) from {args.source}")
    return EXIT_OK
