"""``device subjects list``, ``device forget SUBJECT_ID``, ``device purge-expired``.

The list shows consent, expiry and counts, and the display name (decrypted locally for the operator);
never templates.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.commands._gallery_cli import add_operator_option, operator_of
from device.config import UnitConfig
from device.errors import require_plain, shown
from device.events.forgotten import ForgetReason, announce_forgotten
from device.events.outbox import Outbox, OutboxError
from device.events.payloads import PayloadError, Topics
from device.events.signing import unit_event_key
from device.identity.gallery_records import SubjectInfo, utc_now
from device.identity.gallery_store import GalleryStore
from device.layout import StateLayout


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("subjects", "the enrolled subjects (never their templates)")
    listing = group.add("list", list_subjects, "list enrolled subjects: id, name, consent, expiry")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    forget = commands.add("forget", forget_subject, "destroy a subject's templates and name for good")
    forget.add_argument("subject_id", metavar="SUBJECT_ID")
    forget.add_argument("--reason", default="request", help="recorded in the audit log (default: request)")
    forget.add_argument(
        "--yes", action="store_true", help="confirm: forgetting cannot be undone (else asked, on a terminal)"
    )
    add_operator_option(forget)

    purge = commands.add("purge-expired", purge_expired, "forget every subject whose enrolment expired")
    add_operator_option(purge)


def subject_summary(info: SubjectInfo, name: str | None, today: date) -> dict[str, Any]:
    return {
        "subject_id": info.subject_id,
        "name": name,
        "created": info.created,
        "expires": info.expires.isoformat(),
        "expired": info.is_expired(today),
        "last_seen": None if info.last_seen is None else info.last_seen.isoformat(),
        "templates": info.template_count,
        "consent": {
            "reference": info.consent.reference,
            "recorded_at": info.consent.recorded_at,
            "operator": info.consent.operator,
            "purpose_version": info.consent.purpose_version,
        },
    }


def list_subjects(args: argparse.Namespace) -> int:
    store = GalleryStore.from_config(config_from_args(args, required=True))
    contents = store.load()
    today = utc_now().date()
    rows = [
        subject_summary(subject.info, store.sealer.open_subject(subject).name, today)
        for subject in contents.subjects
    ]
    if args.json:
        print(json.dumps({"gallery_version": contents.version, "subjects": rows}, indent=2))
        return EXIT_OK
    if not rows:
        print("no subjects enrolled")
        return EXIT_OK
    header = ("SUBJECT", "NAME", "TEMPLATES", "EXPIRES", "LAST SEEN", "CONSENT", "OPERATOR")
    table = [header] + [
        (
            shown(row["subject_id"]),
            shown(row["name"] or "-"),
            str(row["templates"]),
            row["expires"] + (" (expired)" if row["expired"] else ""),
            row["last_seen"] or "-",
            shown(f"{row['consent']['reference']} ({row['consent']['purpose_version']})"),
            shown(row["consent"]["operator"]),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def forget_subject(args: argparse.Namespace) -> int:
    operator, reason = operator_of(args), require_plain(args.reason, "--reason")
    store = GalleryStore.from_config(config_from_args(args, required=True))
    name = store.open_subject(args.subject_id).name
    who = shown(f"{name} ({args.subject_id})" if name else args.subject_id)
    if not getattr(args, "yes", False) and not confirmed_on_terminal(f"Forget {who}? This cannot be undone."):
        print(
            f"not forgotten: forgetting {who} cannot be undone; re-run with --yes to confirm",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = config_from_args(args, required=True)
    store.forget(args.subject_id, operator, reason=reason)
    print(f"forgot {who}: its data key, templates and name are destroyed (crypto-erase)")
    return announce(config, [args.subject_id], "forgotten_on_request")


def announce(config: UnitConfig, subject_ids: list[str], reason: ForgetReason) -> int:
    """Queues one signed ``subject_forgotten`` event per subject in the unit's outbox (MQTT units only),
    so that archives tombstone the subject in their rows; the service publishes them."""
    if not config.mqtt.enabled or not subject_ids:
        return EXIT_OK
    try:
        key = unit_event_key(StateLayout.from_config(config))
        outbox = Outbox(config.mqtt.outbox_path, max_rows=config.mqtt.outbox_max_rows)
    except (PayloadError, OutboxError, OSError) as error:
        print(f"error: subject_forgotten not queued, archives keep the subject id: {error}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        topics = Topics(config.mqtt.topic_prefix, config.unit.id)
        for subject_id in subject_ids:
            entry = announce_forgotten(outbox, key, topics, subject_id, reason)
            print(f"queued subject_forgotten for {subject_id} (seq {entry.seq}): archives tombstone it")
    finally:
        outbox.close()
    return EXIT_OK


def confirmed_on_terminal(question: str) -> bool:
    """Asks on an interactive terminal only; a script must say --yes."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} Type yes to confirm: ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


def purge_expired(args: argparse.Namespace) -> int:
    store = GalleryStore.from_config(config_from_args(args, required=True))
    purged = store.purge_expired(operator_of(args))
    for subject_id in purged:
        print(f"purged {subject_id} (enrolment expired)")
    print(f"purged {len(purged)} expired subject(s)")
    return announce(config_from_args(args, required=True), purged, "enrolment_expired")
