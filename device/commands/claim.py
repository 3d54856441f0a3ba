"""``device claim SUBJECT_ID``: the next decision window matches only this subject (1:1 verification).

For badge readers, keypads and door bells wired to the unit. The command reaches the running unit
through a file in ``<state_dir>/claims/`` (see ``device.identity.claims``): the unit listens on no port.
"""

from __future__ import annotations

import argparse
import sys

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.identity.claims import ClaimDrop
from device.identity.gallery_records import utc_now
from device.identity.gallery_store import GalleryStore
from device.layout import StateLayout


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "claim", claim_subject, "verification mode: match the next decision window against one subject only"
    )
    parser.add_argument("subject_id", metavar="SUBJECT_ID")


def claim_subject(args: argparse.Namespace) -> int:
    config = config_from_args(args, required=True)
    store = GalleryStore.from_config(config)
    info = store.load().find(args.subject_id).info
    if info.is_expired(utc_now().date()):
        print(f"error: the enrolment of {info.subject_id} expired on {info.expires}", file=sys.stderr)
        return EXIT_FAILURE
    drop = ClaimDrop(StateLayout.from_config(config).claims, config.matching.claim_window_s)
    path = drop.submit(info.subject_id)
    print(
        f"claim for {info.subject_id} handed to the unit ({path.name}); it applies to the next decision "
        f"within {config.matching.claim_window_s:g} s"
    )
    return EXIT_OK
