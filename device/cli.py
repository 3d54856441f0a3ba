"""Command-line entry point.

Each module in ``device.commands`` registers its own subcommands, so stages and features add commands
without editing a central list. ``--config PATH`` is accepted before and after any subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from device import __version__
from device.config import ConfigError, UnitConfig
from device.discovery import NO_CONFIG_SOURCE, ConfigChoice, choose_config, load_chosen_config
from device.errors import EXIT_FAILURE as EXIT_FAILURE
from device.errors import EXIT_OK as EXIT_OK
from device.errors import EXIT_USAGE as EXIT_USAGE
from device.errors import UserError

Handler = Callable[[argparse.Namespace], int]


class CommandModule(Protocol):
    def register(self, commands: CommandRegistry) -> None: ...


class CommandRegistry:
    """Adds subcommands that all share the common options (``--config``, ``--log-level``)."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        self.common = _common_options(suppress_defaults=True)

    def add(self, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(
            name, help=help_text, description=help_text, parents=[self.common]
        )
        parser.set_defaults(handler=handler)
        return parser

    def add_group(self, name: str, help_text: str) -> CommandRegistry:
        """A command with its own subcommands, e.g. ``device models verify``."""
        parser = self._subparsers.add_parser(
            name, help=help_text, description=help_text, parents=[self.common]
        )
        parser.set_defaults(handler=_missing_subcommand(parser))
        return CommandRegistry(parser.add_subparsers(title="commands", metavar="COMMAND"))


def _missing_subcommand(parser: argparse.ArgumentParser) -> Handler:
    def handler(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


def _common_options(*, suppress_defaults: bool) -> argparse.ArgumentParser:
    # Subcommands use SUPPRESS so that a --config given before the subcommand is not overwritten by the
    # subcommand's default of None.
    default: object = argparse.SUPPRESS if suppress_defaults else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=default, metavar="PATH", help="unit config file (TOML)"
    )
    common.add_argument(
        "--log-level",
        # None at the top level: commands can tell "not given" (use the config's logging.level) apart
        default=argparse.SUPPRESS if suppress_defaults else None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default WARNING; `run`: the config's logging.level, INFO)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device",
        description="Entrance camera unit: detects and recognises enrolled residents on the unit and "
        "publishes decisions (never images or biometrics) over MQTT.",
        parents=[_common_options(suppress_defaults=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    registry = CommandRegistry(parser.add_subparsers(title="commands", metavar="COMMAND"))
    for module in _command_modules():
        module.register(registry)
    return parser


def _command_modules() -> list[CommandModule]:
    import device.commands as package

    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")
    )
    modules: list[CommandModule] = [importlib.import_module(f"{package.__name__}.{name}") for name in names]
    return modules


def config_from_args(args: argparse.Namespace, *, required: bool = False) -> UnitConfig:
    """The unit config (``--config`` > $ENTRANCE_CAMERA_CONFIG > /etc/entrance-camera/unit.toml), or the
    built-in defaults when none applies; ``required``: refuse with "no config given" instead."""
    path: Path | None = getattr(args, "config", None)
    origin = getattr(args, "config_origin", None) or ("--config" if path is not None else "none")
    return load_chosen_config(ConfigChoice(path, origin), required=required)


PR_SET_DUMPABLE = 4


def refuse_core_dumps() -> None:
    """prctl(PR_SET_DUMPABLE, 0): no core file of this process (keys, templates, frames are in memory)
    and no ptrace attach by other processes of the same user. LimitCORE=0 in the units says it again."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(name, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logging.getLogger(__name__).warning(
            "could not mark the process not dumpable (errno %d)", ctypes.get_errno()
        )


def main(argv: Sequence[str] | None = None) -> int:
    refuse_core_dumps()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands read args.config: the discovered file stands in for --config when it was not given.
    choice = choose_config(getattr(args, "config", None))
    args.config, args.config_origin = choice.path, choice.origin
    # Interactive commands print their results; log lines are for problems. `run` raises this to the
    # config's logging.level (INFO) itself.
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", None) or "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except ConfigError as error:  # its message is already a list of problems, one per line
        no_config = error.source == NO_CONFIG_SOURCE
        print(f"error: {error.problems[0]}" if no_config else str(error), file=sys.stderr)
        return error.exit_code
    except UserError as error:  # every layer's fixable problem: one line, its exit code, no traceback
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
