#!/usr/bin/env python3
"""Renders mosquitto.conf and the ACL file for the entrance-camera fleet from the template next to it.

    python3 -m deploy.broker.render --pki PKI --out /etc/mosquitto/entrance --owner mosquitto \\
        --consumer backend [--consumer home-assistant] [--ha-discovery] [--prefix entrance]

Topic layout (see docs/asyncapi.yaml): a unit with identity U (its certificate CN) may
write `<prefix>/U/events`, `<prefix>/U/status`, `<prefix>/U/health` and read `<prefix>/U/cmd/#`;
it answers commands on `<prefix>/U/answers/<consumer>`, which only that consumer may read.
The unit rules are rendered per unit (`user U` blocks, from the PKI's index of unit certificates), not
as `%u` patterns: Mosquitto applies a pattern to every client, so a pattern would let a consumer
certificate write `<prefix>/<consumer>/events` as if it were a unit (issue 13). Adding a unit means
issuing its certificate, rendering again and reloading the broker (SIGHUP); the fleet playbook does that.
With Home Assistant discovery it may also write `homeassistant/<component>/U/<object>/config`
(HA's optional node_id level is the unit id). Units do not read HA's birth message: discovery configs
are retained, so a restarted Home Assistant finds them without a re-announcement.
A consumer reads every unit's events, status and health, may write any unit's cmd topics and reads
the answers addressed to it (`<prefix>/+/answers/<itself>`), nobody else's; it reads and writes its own
access probe `<prefix>/consumers/C/probe`, writes its own retained status `<prefix>/consumers/C/status`
(the door's online/offline) and reads the other consumers' status.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from deploy.broker.bridge import BridgeSettings, render_bridge, render_central_acl
from deploy.broker.pki import Pki, PkiError, check_identity

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "mosquitto.conf.in"
TOPIC_PREFIX_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")
HA_PREFIX = "homeassistant"
CONSUMERS_LEVEL = "consumers"


class RenderError(Exception):
    """The requested broker configuration cannot be rendered (bad prefix, missing PKI file)."""


@dataclass(frozen=True)
class BrokerSettings:
    pki_dir: Path
    out_dir: Path
    prefix: str = "entrance"
    consumers: tuple[str, ...] = ("backend",)
    ha_discovery: bool = False
    port: int = 8883
    # Empty = all interfaces (production); tests bind to 127.0.0.1.
    bind_address: str = ""
    persistence_dir: Path | None = None
    log_dest: str = "syslog"
    # Saving after every change costs a small write per message but means a broker crash loses no
    # acknowledged event that a consumer had not yet received. Raise it for very busy fleets.
    autosave_interval: int = 1
    autosave_on_changes: bool = True
    client_expiration: str = "14d"
    max_queued_messages: int = 100_000
    max_packet_size: int = 65_536
    # When started as root, Mosquitto drops to this user (Debian: `mosquitto`). None = leave the default.
    run_as_user: str | None = None
    # Who gets the copied certificates, the ACL and the persistence directory (root only). Mosquitto
    # reads its certificates after it dropped to its user, and again on every SIGHUP.
    owner: str | None = None
    # Many buildings (deploy/broker/bridge.py): a building broker bridged out to the central broker,
    # or the central broker itself (its ACL confines each building to `<site>/<building>/<prefix>/`).
    bridge: BridgeSettings | None = None
    central_site: str | None = None


def _check_prefix(prefix: str) -> str:
    parts = prefix.split("/")
    if not prefix or any(not part for part in parts) or set(prefix) - TOPIC_PREFIX_CHARS:
        raise RenderError(f"topic prefix {prefix!r}: use letters, digits, '_', '-' and '/' between levels")
    return prefix


def consumer_topic(prefix: str, identity: str, leaf: str) -> str:
    """``<prefix>/consumers/<identity>/<leaf>``: a consumer's own topics (``probe``, ``status``).
    Four levels, so none of the units' ``<prefix>/+/<leaf>`` rules reaches them."""
    return f"{prefix}/{CONSUMERS_LEVEL}/{identity}/{leaf}"


def render_acl(
    prefix: str, consumers: tuple[str, ...], ha_discovery: bool, units: tuple[str, ...] = ()
) -> str:
    """The ACL: one block per unit identity (its own topics) and one per consumer identity.

    There are no ``pattern`` lines: a pattern applies to every client, consumers included. An identity
    that is neither a listed unit nor a listed consumer may connect but can read and write nothing.
    """
    _check_prefix(prefix)
    for identity in (*units, *consumers):
        try:
            check_identity(identity)
        except PkiError as error:
            raise RenderError(str(error)) from error
    both = sorted(set(units) & set(consumers))
    if both:
        raise RenderError(f"identities cannot be both unit and consumer: {', '.join(both)}")
    if CONSUMERS_LEVEL in units:
        # A unit of that name would own <prefix>/consumers/cmd/# and the like: the consumers' corner.
        raise RenderError(f"a unit cannot be called {CONSUMERS_LEVEL!r}: that topic level is the consumers'")
    lines = [
        "# Rendered by deploy/broker/render.py.",
        "# A user is the client's certificate CN (use_identity_as_username).",
        "# Mosquitto checks these rules when a message is published and when it is delivered;",
        "# a SUBSCRIBE to a forbidden filter is accepted but nothing forbidden is ever delivered.",
        "# Units: their own topics only. Consumers: read all units, write commands; never events,",
        "# status, health or discovery (no pattern lines, which would apply to consumers too).",
    ]
    for unit in sorted(set(units)):
        lines += [
            "",
            f"user {unit}",
            f"topic write {prefix}/{unit}/events",
            f"topic write {prefix}/{unit}/status",
            f"topic write {prefix}/{unit}/health",
            f"topic read {prefix}/{unit}/cmd/#",
            # Answers to commands (MQTT v5 response topics): <prefix>/<unit>/answers/<consumer>.
            f"topic write {prefix}/{unit}/answers/+",
        ]
        if ha_discovery:
            # Home Assistant discovery: homeassistant/<component>/<unit>/<object>/config
            lines.append(f"topic write {HA_PREFIX}/+/{unit}/#")
    for consumer in consumers:
        lines += [
            "",
            f"user {consumer}",
            f"topic read {prefix}/+/events",
            f"topic read {prefix}/+/status",
            f"topic read {prefix}/+/health",
            f"topic write {prefix}/+/cmd/#",
            # Its own answers only: another consumer's answers say what that one commanded.
            f"topic read {prefix}/+/answers/{consumer}",
            # Its own corner, written by no one else: the access probe a consumer sends itself to
            # prove the broker delivers to it (Mosquitto grants every SUBSCRIBE and filters delivery),
            # and its retained status (a door's online/offline with its last will).
            f"topic readwrite {consumer_topic(prefix, consumer, 'probe')}",
            f"topic write {consumer_topic(prefix, consumer, 'status')}",
            f"topic read {consumer_topic(prefix, '+', 'status')}",
        ]
        if ha_discovery:
            lines += [f"topic read {HA_PREFIX}/#", f"topic write {HA_PREFIX}/status"]
    return "\n".join(lines) + "\n"


# What the broker needs from the PKI, copied next to its config: never the CA key, so the broker host
# need not hold it, and the broker's user can own exactly these files.
BROKER_FILES = {
    "ca_file": ("ca.crt", "ca.crt"),
    "cert_file": ("broker/broker.crt", "broker.crt"),
    "key_file": ("broker/broker.key", "broker.key"),
    "crl_file": ("crl.pem", "crl.pem"),
}


def _cert_dir(settings: BrokerSettings) -> Path:
    return settings.out_dir.resolve() / "certs"


def render_config(settings: BrokerSettings) -> str:
    out = settings.out_dir.resolve()
    persistence = (settings.persistence_dir or out / "data").resolve()
    values = {
        **{name: str(_cert_dir(settings) / copy) for name, (_source, copy) in BROKER_FILES.items()},
        "user_line": f"user {settings.run_as_user}" if settings.run_as_user else "",
        "persistence_dir": str(persistence),
        "autosave_interval": str(settings.autosave_interval),
        "autosave_on_changes": "true" if settings.autosave_on_changes else "false",
        "client_expiration": settings.client_expiration,
        "max_queued_messages": str(settings.max_queued_messages),
        "max_packet_size": str(settings.max_packet_size),
        "log_dest": settings.log_dest,
        "acl_file": str(out / "acl"),
        "listener": f"{settings.port} {settings.bind_address}".strip(),
    }
    conf = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
    bridge = _bridge_copies(settings)
    return conf + (render_bridge(bridge, settings.prefix) if bridge else "")


# The bridge's central CA, certificate and key, copied beside the broker's own (same owner, key 0600).
BRIDGE_FILES = {"ca_file": "central-ca.crt", "cert_file": "bridge.crt", "key_file": "bridge.key"}


def _bridge_copies(settings: BrokerSettings) -> BridgeSettings | None:
    if settings.bridge is None:
        return None
    certs = _cert_dir(settings)
    return dataclasses.replace(
        settings.bridge,
        ca_file=certs / BRIDGE_FILES["ca_file"],
        cert_file=certs / BRIDGE_FILES["cert_file"],
        key_file=certs / BRIDGE_FILES["key_file"],
    )


def _copy(source: Path, target: Path, mode: int) -> None:
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    tmp.chmod(mode)
    tmp.replace(target)


def unit_identities(pki_dir: Path) -> tuple[str, ...]:
    """Every unit with a certificate that is not revoked, from the PKI's index."""
    issued = Pki(pki_dir).issued()
    live = {cert.identity for cert in issued if cert.role == "unit" and cert.revoked_at is None}
    return tuple(sorted(live))


def building_identities(pki_dir: Path) -> tuple[str, ...]:
    """Every building (bridge) certificate that is not revoked, from the central PKI's index."""
    issued = Pki(pki_dir).issued()
    return tuple(sorted({c.identity for c in issued if c.role == "building" and c.revoked_at is None}))


def settings_acl(settings: BrokerSettings) -> str:
    """The ACL these settings ask for: a building broker's (units, consumers) or the central one's."""
    pki = settings.pki_dir.resolve()
    if settings.central_site is not None:
        return render_central_acl(
            building_identities(pki), settings.consumers, settings.prefix, settings.central_site
        )
    return render_acl(settings.prefix, settings.consumers, settings.ha_discovery, unit_identities(pki))


def write_broker_config(settings: BrokerSettings) -> Path:
    """Writes <out>/mosquitto.conf, <out>/acl and <out>/certs/ (CA and broker certificate, broker key
    0600, CRL), creates the persistence directory and hands all of it to `owner`; returns the conf.
    Run it again after a revocation: it copies the new CRL."""
    pki = settings.pki_dir.resolve()
    sources = {name: pki / source for name, (source, _copy_name) in BROKER_FILES.items()}
    missing = [str(path) for path in sources.values() if not path.exists()]
    if missing:
        raise RenderError(f"PKI files missing (run pki.py init and pki.py broker): {', '.join(missing)}")
    conf = render_config(settings)
    acl = settings_acl(settings)
    certs = _cert_dir(settings)
    certs.mkdir(parents=True, exist_ok=True, mode=0o750)
    for name, (_source, copy_name) in BROKER_FILES.items():
        _copy(sources[name], certs / copy_name, 0o600 if name == "key_file" else 0o644)
    if settings.bridge is not None:
        for name, copy_name in BRIDGE_FILES.items():
            source = Path(getattr(settings.bridge, name))
            _copy(source, certs / copy_name, 0o600 if name == "key_file" else 0o644)
    persistence = settings.persistence_dir or settings.out_dir / "data"
    persistence.mkdir(parents=True, exist_ok=True, mode=0o750)
    (settings.out_dir / "acl").write_text(acl, encoding="utf-8")
    conf_path = settings.out_dir / "mosquitto.conf"
    conf_path.write_text(conf, encoding="utf-8")
    if settings.owner:
        for path in [certs, *certs.iterdir(), persistence, settings.out_dir / "acl"]:
            shutil.chown(path, user=settings.owner, group=settings.owner)
    return conf_path


def _bridge_from_args(args: argparse.Namespace) -> BridgeSettings | None:
    if args.bridge_to is None:
        return None
    host, _, port = args.bridge_to.rpartition(":")
    files = (args.bridge_ca, args.bridge_cert, args.bridge_key)
    if not host or not port.isdigit() or args.building is None or None in files:
        raise RenderError(
            "--bridge-to HOST:PORT needs --building, --bridge-ca, --bridge-cert and --bridge-key"
        )
    return BridgeSettings(
        building=args.building,
        central_host=host,
        central_port=int(port),
        ca_file=args.bridge_ca.resolve(),
        cert_file=args.bridge_cert.resolve(),
        key_file=args.bridge_key.resolve(),
        site=args.site,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render the entrance-camera Mosquitto config and ACL")
    parser.add_argument("--pki", type=Path, required=True, help="directory made by pki.py")
    parser.add_argument("--out", type=Path, required=True, help="where mosquitto.conf and acl go")
    parser.add_argument("--prefix", default="entrance", help="topic prefix (mqtt.topic_prefix on units)")
    parser.add_argument("--consumer", action="append", default=[], help="consumer identity (repeatable)")
    parser.add_argument("--ha-discovery", action="store_true", help="allow Home Assistant discovery topics")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--bind", default="", help="bind address (default: all interfaces)")
    parser.add_argument("--persistence-dir", type=Path, default=Path("/var/lib/mosquitto"))
    parser.add_argument("--log-dest", default="syslog", help="syslog, stderr, stdout or 'file <path>'")
    parser.add_argument("--user", default=None, help="user Mosquitto drops to when started as root")
    parser.add_argument("--owner", default=None, help="chown certs, ACL and data to this user (mosquitto)")
    parser.add_argument("--as-me", action="store_true", help="run as the current user (local testing)")
    many = parser.add_argument_group("many buildings (deploy/broker/bridge.py)")
    many.add_argument("--central", metavar="SITE", default=None, help="render the central broker's ACL")
    many.add_argument("--bridge-to", metavar="HOST:PORT", default=None, help="bridge to the central broker")
    many.add_argument("--building", default=None, help="this building's id (its bridge certificate's CN)")
    many.add_argument("--site", default="site", help="the central broker's first topic level")
    many.add_argument("--bridge-ca", type=Path, help="the central broker's CA certificate")
    many.add_argument("--bridge-cert", type=Path, help="the building's certificate from the central CA")
    many.add_argument("--bridge-key", type=Path, help="its private key")
    args = parser.parse_args(argv)
    try:
        bridge = _bridge_from_args(args)
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = BrokerSettings(
        pki_dir=args.pki,
        out_dir=args.out,
        prefix=args.prefix,
        consumers=tuple(args.consumer) or ("backend",),
        ha_discovery=args.ha_discovery,
        port=args.port,
        bind_address=args.bind,
        persistence_dir=args.persistence_dir,
        log_dest=args.log_dest,
        run_as_user=getpass.getuser() if args.as_me else args.user,
        owner=args.owner,
        bridge=bridge,
        central_site=args.central,
    )
    try:
        conf = write_broker_config(settings)
    except (RenderError, LookupError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {conf} and {conf.parent / 'acl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
