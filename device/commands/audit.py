"""``device audit verify|export``: check the hash-chained audit log, or copy it out (no biometrics in it).

Verify checks every entry's MAC and link, that nothing was cut off the end (the gallery file records the
latest entry it was written with), and that the gallery file is not older than the last gallery change
the log records (a restored old gallery could bring back a forgotten subject).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.config import UnitConfig
from device.identity.audit import AuditLog, VerifyResult
from device.identity.gallery_records import GalleryUnreadableError
from device.identity.gallery_store import GalleryStore
from device.identity.masterkey import load_master_key
from device.layout import StateLayout

GALLERY_EVENTS = frozenset({"enrol", "forget", "purge"})


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("audit", "the append-only audit log of enrol, forget, purge, key events")
    group.add("verify", verify_audit, "check the chain; exit 1 naming every altered or missing entry")
    export = group.add("export", export_audit, "write the log as JSON lines (verified; exit 1 if not)")
    export.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")


def verify_with_gallery(config: UnitConfig) -> VerifyResult:
    master_key = load_master_key(config.gallery.master_key_path, config.gallery.key_source)
    layout = StateLayout.from_config(config)
    log = AuditLog.of_unit(layout, master_key)
    store = GalleryStore(layout.gallery, master_key, log, keyring_file=layout.keyring)
    try:
        contents = store.load()
    except GalleryUnreadableError as error:
        result = log.verify()
        result.problems.append(f"gallery not checked against the log: {error}")
        return result
    result = log.verify(contents.audit_anchor)
    last_change = max(
        (entry.seq for entry in log.entries() if entry.event in GALLERY_EVENTS),
        default=None,
    )
    recorded = None if contents.audit_anchor is None else contents.audit_anchor.seq
    if last_change is not None and (recorded is None or recorded < last_change):
        result.problems.append(
            f"the gallery file was written before audit entry seq {last_change} (it records "
            f"{recorded}): an older gallery file was put back"
        )
    return result


def verify_audit(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    result = verify_with_gallery(config)
    if not result.ok:
        print(f"audit log FAILED verification ({result.entries} entries):", file=sys.stderr)
        for problem in result.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_FAILURE
    head = "empty" if result.head is None else f"head seq {result.head.seq} {result.head.mac[:16]}"
    print(f"audit log ok: {result.entries} entries, {head}")
    return EXIT_OK


def export_audit(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    result = verify_with_gallery(config)
    master_key = load_master_key(config.gallery.master_key_path, config.gallery.key_source)
    log = AuditLog.of_unit(StateLayout.from_config(config), master_key)
    text = "".join(line + "\n" for line in log.raw_lines())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    if not result.ok:
        print("warning: the exported log FAILED verification:", file=sys.stderr)
        for problem in result.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"exported {result.entries} verified entries", file=sys.stderr)
    return EXIT_OK
