"""Helpers shared by the gallery commands (enrol, subjects, forget, audit, identify, claim, ...)."""

from __future__ import annotations

import argparse
import getpass


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
