"""Helpers shared by the gallery commands (enrol, subjects, forget, audit, identify, claim, ...)."""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable

from device.cli import EXIT_FAILURE
from device.identity.audit import AuditError
from device.identity.claims import ClaimError
from device.identity.enrol import EnrolmentError
from device.identity.gallery_records import GalleryError
from device.identity.masterkey import MasterKeyError
from device.models.manifest import ModelFileError

Handler = Callable[[argparse.Namespace], int]


def reports_gallery_errors(handler: Handler) -> Handler:
    """Turns the gallery's own errors into one clear line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (
            GalleryError,
            MasterKeyError,
            AuditError,
            ClaimError,
            EnrolmentError,
            ModelFileError,
        ) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILURE

    return wrapped


def default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def add_operator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator",
        default=None,
        metavar="WHO",
        help="who performs this (recorded in the audit log; default: the logged-in user)",
    )
