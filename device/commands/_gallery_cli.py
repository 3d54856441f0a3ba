"""Helpers shared by the gallery commands (enrol, subjects, forget, audit, identify, claim, ...)."""

from __future__ import annotations

import argparse
import getpass

from device.errors import require_plain


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


def operator_of(args: argparse.Namespace) -> str:
    """The ``--operator`` given, or the logged-in user; refused with control characters in it (it is
    printed by ``subjects list`` and ``audit export`` and written to the audit log)."""
    return require_plain(args.operator or default_operator(), "--operator")
