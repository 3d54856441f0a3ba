"""Helpers shared by the commands that reach the broker with their own certificate, not the unit's
(``events tail``, ``door``, ``command send``, ``status``): the connection options and the settings built
from them, each falling back to the unit config's ``[mqtt]`` section."""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK
from device.config import UnitConfig
from device.consumers.consumer import ConsumerSettings, EventConsumer, check_share_group

# How long a consumer waits for the broker to confirm its subscription (SUBACK and its own probe back):
# on a working broker that takes well under a second; longer means it will not come.
READY_WAIT_S = 10.0
# How often ``listen`` looks at the consumer's state (a failure after a reconnect, the door's watchdog).
POLL_S = 0.2


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
    consumer: EventConsumer,
    until: threading.Event,
    timeout_s: float,
    *,
    label: str,
    ready_wait_s: float = READY_WAIT_S,
    on_listening: Callable[[], None] | None = None,
    while_listening: Callable[[], None] | None = None,
) -> int:
    """Waits (at most ``ready_wait_s``) until the broker confirmed the subscription, says ``<label>
    <topic filter>`` on stderr and calls ``on_listening``, then runs until ``until`` is set,
    ``timeout_s`` has passed (0: no limit) or Ctrl-C, calling ``while_listening`` about every
    ``POLL_S`` (connected or not); stops the consumer after.

    EXIT_OK then; EXIT_FAILURE after one ``error:`` line when the consumer cannot listen (the broker
    refused it, hung up before the subscription was confirmed, never confirmed it, or refused it later)."""
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    wait_s = ready_wait_s if deadline is None else min(ready_wait_s, timeout_s)
    try:
        if not consumer.wait_settled(wait_s):
            _say_error(
                f"the broker at {consumer.where} did not confirm the subscription to {consumer.topic_filter} "
                f"within {wait_s:g} s"
            )
            return EXIT_FAILURE
        if consumer.failure is not None:
            _say_error(consumer.failure)
            return EXIT_FAILURE
        print(f"{label} {consumer.topic_filter}", file=sys.stderr, flush=True)
        if on_listening is not None:
            on_listening()
        while not until.wait(POLL_S):
            if consumer.failure is not None:
                _say_error(consumer.failure)
                return EXIT_FAILURE
            if while_listening is not None:
                while_listening()
            if deadline is not None and time.monotonic() >= deadline:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
    return EXIT_OK


def _say_error(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def explain_cannot_connect(settings: ConsumerSettings, error: BaseException) -> str:
    """Why a consumer's connection failed, and what to change, in the terms of its options."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        if "hostname" in str(error) or "IP address mismatch" in str(error):
            return (
                f"the broker at {where} presents a certificate for another name ({error.verify_message}); "
                "pass --host with the name in the broker's certificate"
            )
        return (
            f"TLS: the broker at {where} has a certificate that does not chain to the CA {settings.ca_file} "
            f"({error.verify_message}); pass --ca with this broker's CA (ca.crt of its PKI)"
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        if "UNKNOWN_CA" in reason.upper() or "CERTIFICATE" in reason.upper():
            return (
                f"TLS: the broker at {where} refused the certificate {settings.cert_file} ({reason}); "
                "use a consumer certificate issued by this broker's CA (and not revoked)"
            )
        return f"TLS with {where} failed ({reason}); is --port the broker's TLS port (8883)?"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused: nothing accepts connections on {where}; check --host, --port, the broker"
    if isinstance(error, socket.gaierror):
        return f"unknown host {settings.host!r} ({error.strerror}); check --host"
    if isinstance(error, TimeoutError):
        return f"no answer from {where} in time; check the network path and firewall to the broker"
    return f"cannot connect to {where}: {error}"


def print_cannot_connect(settings: ConsumerSettings, error: BaseException) -> None:
    _say_error(explain_cannot_connect(settings, error))
