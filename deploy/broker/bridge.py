"""Many buildings: a building's Mosquitto bridged to a central broker, and the central broker's ACL.

A building broker (rendered by render.py as before) gets one more section: a Mosquitto *bridge* that
connects out to the central broker over TLS with the building's own client certificate (issued by the
central CA, CN = building id), speaks MQTT v5, keeps its session (``cleansession false``) and forwards
at QoS 1, so events queue in the building broker while the link is down and flow on when it returns.
Topics are remapped on the way: ``<prefix>/<unit>/events`` in the building is
``<site>/<building>/<prefix>/<unit>/events`` on the central broker (status and health alike), and
commands come back the other way.

The central broker runs the same template (TLS only, client certificates, persistence) with another
ACL: a building identity may write only under ``<site>/<building>/`` and read only its own units'
command topics there; a consumer identity reads every building's events, status and health and writes
commands. Nothing else may publish: units never connect to the central broker.

Event signatures do not cover the topic (device/events/signing.py signs the event's own fields, which
name the unit and its seq), so remapping the topic leaves every event verifiable, and no broker on the
way can alter or invent one. Consumers check that the unit named in the event is the topic's unit
level (``device.consumers`` keep that check: the level before ``events``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.broker.pki import PkiError, check_identity

DEFAULT_SITE = "site"
# Topics a unit writes (bridged out) and reads (bridged in), relative to <prefix>/.
OUTBOUND = ("+/events", "+/status", "+/health")
INBOUND = ("+/cmd/#",)


class BridgeError(Exception):
    """A bridge or central ACL that cannot be rendered as asked."""


def _identity(name: str, what: str) -> str:
    try:
        return check_identity(name)
    except PkiError as error:
        raise BridgeError(f"{what}: {error}") from error


def building_prefix(site: str, building: str, prefix: str) -> str:
    """Where a building's ``<prefix>/...`` topics live on the central broker."""
    return f"{site}/{_identity(building, 'building')}/{prefix}"


@dataclass(frozen=True)
class BridgeSettings:
    """The building side of a bridge. Certificate files are the building's, issued by the central CA."""

    building: str
    central_host: str
    central_port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    site: str = DEFAULT_SITE
    # Seconds before retrying a lost link: the first retry soon, then backing off to the second value.
    restart_timeout: tuple[int, int] = (2, 30)
    keepalive_s: int = 30


def render_bridge(settings: BridgeSettings, prefix: str) -> str:
    """The ``connection`` section appended to the building's mosquitto.conf (it must come last: every
    line after ``connection`` belongs to that bridge)."""
    remote = building_prefix(settings.site, settings.building, prefix)
    lines = [
        "",
        "# Bridge to the central broker (deploy/broker/bridge.py). Topics are remapped under the",
        "# building's prefix; signed events stay verifiable (the signature does not cover the topic).",
        f"connection central-{settings.building}",
        f"address {settings.central_host}:{settings.central_port}",
        "bridge_protocol_version mqttv50",
        # The bridge is the central broker's client `<building>`: its certificate CN is the ACL user.
        f"remote_clientid bridge-{settings.building}",
        f"local_clientid bridge-{settings.building}-local",
        # Keep the session on both sides: while the link is down the building broker queues the QoS 1
        # messages of the bridge's local subscription, and the central broker keeps what it had in flight.
        "cleansession false",
        "local_cleansession false",
        "start_type automatic",
        f"restart_timeout {settings.restart_timeout[0]} {settings.restart_timeout[1]}",
        f"keepalive_interval {settings.keepalive_s}",
        # Notifications would publish $SYS-like state on the central broker, outside the building's
        # prefix (the ACL refuses it); the link state is in the building broker's log instead.
        "notifications false",
        # try_private is Mosquitto's own bridge extension; plain MQTT v5 keeps the path open to EMQX/HiveMQ.
        "try_private false",
        f"bridge_cafile {settings.ca_file}",
        f"bridge_certfile {settings.cert_file}",
        f"bridge_keyfile {settings.key_file}",
        "bridge_insecure false",
    ]
    lines += [f"topic {pattern} out 1 {prefix}/ {remote}/" for pattern in OUTBOUND]
    lines += [f"topic {pattern} in 1 {prefix}/ {remote}/" for pattern in INBOUND]
    return "\n".join(lines) + "\n"


def render_central_acl(
    buildings: tuple[str, ...], consumers: tuple[str, ...], prefix: str, site: str = DEFAULT_SITE
) -> str:
    """The central broker's ACL: each building writes under its own prefix only, consumers read all.

    Mosquitto checks ``topic write`` when a message is published and ``topic read`` when it would be
    delivered; a publish outside a building's prefix is refused (PUBACK 0x87 under MQTT v5) and reaches
    nobody.
    """
    for name in (*buildings, *consumers):
        _identity(name, "identity")
    both = sorted(set(buildings) & set(consumers))
    if both:
        raise BridgeError(f"identities cannot be both building and consumer: {', '.join(both)}")
    lines = [
        "# Rendered by deploy/broker/bridge.py: the central broker of many buildings.",
        "# A user is the client's certificate CN (use_identity_as_username).",
        "# Buildings (their bridges): write their own units' events/status/health under their own prefix,",
        "# read their own units' commands. Consumers: read every building, write commands.",
    ]
    for building in sorted(set(buildings)):
        own = building_prefix(site, building, prefix)
        lines += ["", f"user {building}"]
        lines += [f"topic write {own}/{pattern}" for pattern in OUTBOUND]
        lines += [f"topic read {own}/{pattern}" for pattern in INBOUND]
    for consumer in consumers:
        lines += ["", f"user {consumer}"]
        lines += [f"topic read {site}/+/{prefix}/{pattern}" for pattern in OUTBOUND]
        lines += [f"topic write {site}/+/{prefix}/{pattern}" for pattern in INBOUND]
    return "\n".join(lines) + "\n"
