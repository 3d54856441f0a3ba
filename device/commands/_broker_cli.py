"""Helpers shared by the commands that reach the broker with their own certificate, not the unit's
(``events tail``, ``door``, ``command send``, ``status``): the connection options and the settings built
from them, each falling back to the unit config's ``[mqtt]`` section."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from device.config import UnitConfig
from device.consumers.consumer import ConsumerSettings, EventConsumer, check_share_group


def add_broker_options(
    parser: argparse.ArgumentParser, *, cert_help: str, key_help: str, required: bool = True
) -> None:
    """--host, --port, --ca, --cert, --key and --prefix; ``required``: the certificate and key must be
    given (a command that can do without the broker leaves them optional)."""
    parser.add_argument("--host", help="broker host (default: mqtt.host of the config)")
    parser.add_argument("--port", type=int, help="broker port (default: mqtt.port)")
    parser.add_argument("--ca", type=Path, help="CA certificate (default: mqtt.tls.ca_file)")
    parser.add_argument("--cert", type=Path, required=required, help=cert_help)
    parser.add_argument("--key", type=Path, required=required, help=key_help)
    parser.add_argument("--prefix", help="topic prefix (default: mqtt.topic_prefix)")


def add_share_option(parser: argparse.ArgumentParser) -> None:
    """--share GROUP: an MQTT v5 shared subscription, so instances of one consumer split the events."""
    parser.add_argument(
        "--share",
        metavar="GROUP",
        type=_share_group,
        default="",
        help="join shared-subscription group GROUP ($share/GROUP/...): each event goes to one member",
    )


def _share_group(text: str) -> str:
    if not text:
        return text  # argparse passes the default ("": no group) through the type too
    try:
        return check_share_group(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def broker_ca_file(args: argparse.Namespace, config: UnitConfig) -> Path | None:
    """The CA to check the broker against: ``--ca``, else ``mqtt.tls.ca_file``; None when neither is set."""
    ca_file: Path | None = args.ca or config.mqtt.tls.ca_file
    return ca_file


def required_ca_file(args: argparse.Namespace, config: UnitConfig) -> Path | None:
    """``broker_ca_file``, or None after one line on stderr saying how to give one (a usage error)."""
    ca_file = broker_ca_file(args, config)
    if ca_file is None:
        print("error: no CA certificate: pass --ca or set mqtt.tls.ca_file", file=sys.stderr)
    return ca_file


def consumer_settings(
    args: argparse.Namespace, config: UnitConfig, ca_file: Path, **session: Any
) -> ConsumerSettings:
    """The connection from the options of ``add_broker_options``, each defaulting to ``[mqtt]``;
    ``session``: the rest of ``ConsumerSettings`` (unit, client_id, session_expiry_s)."""
    return ConsumerSettings(
        host=args.host or config.mqtt.host,
        port=args.port or config.mqtt.port,
        ca_file=ca_file,
        cert_file=args.cert,
        key_file=args.key,
        prefix=args.prefix or config.mqtt.topic_prefix,
        **session,
    )


def listen(
    consumer: EventConsumer, until: threading.Event, timeout_s: float, *, subscribe_wait_s: float, label: str
) -> None:
    """Says ``<label> <topic filter>`` on stderr once subscribed (within ``subscribe_wait_s``), then runs
    until ``until`` is set, ``timeout_s`` has passed (0: no limit) or Ctrl-C; stops the consumer after."""
    if consumer.subscribed.wait(subscribe_wait_s):
        print(f"{label} {consumer.topic_filter}", file=sys.stderr, flush=True)
    try:
        until.wait(timeout_s or None)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()


def print_cannot_connect(settings: ConsumerSettings, error: BaseException) -> None:
    print(f"error: cannot connect to {settings.host}:{settings.port}: {error}", file=sys.stderr)
