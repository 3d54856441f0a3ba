"""The central broker as a clustered EMQX 5 instead of one Mosquitto: the same contract in EMQX's terms.

Not run here (EMQX is in neither PyPI, Debian nor npm); ``deploy/broker/emqx/`` holds the config this
renders, and tests/deploy/test_emqx_contract.py checks that its rules give the same answers as the
central Mosquitto ACL (deploy/broker/bridge.py) for every identity, action and topic it tries.

- TLS only, client certificates from the central CA required; the certificate CN is the username
  (``emqx.conf``: ``verify_peer``, ``fail_if_no_peer_cert``, ``peer_cert_as_username = cn``), as Mosquitto's
  ``use_identity_as_username``.
- ``acl.conf`` (file authorization, Erlang terms, first match wins, ``{deny, all}`` last and
  ``no_match = deny``): building B publishes only ``site/B/entrance/+/events|status|health`` and subscribes
  only to its own units' ``cmd/#``; consumers subscribe to every building's events, status and health and
  publish commands. EMQX checks SUBSCRIBE, where Mosquitto checks delivery, so the consumers' rules name
  the shared-subscription form (``$share/<group>/...``) too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.broker.bridge import DEFAULT_SITE, INBOUND, OUTBOUND, BridgeError, building_prefix

HERE = Path(__file__).resolve().parent / "emqx"


def _rule(who: str, action: str, topics: list[str]) -> str:
    quoted = ", ".join(f'"{topic}"' for topic in topics)
    return f'{{allow, {{username, "{who}"}}, {action}, [{quoted}]}}.'


def render_emqx_acl(
    buildings: tuple[str, ...], consumers: tuple[str, ...], prefix: str, site: str = DEFAULT_SITE
) -> str:
    both = sorted(set(buildings) & set(consumers))
    if both:
        raise BridgeError(f"identities cannot be both building and consumer: {', '.join(both)}")
    lines = [
        "%% Rendered by deploy/broker/emqx.py: the central broker's rules (bridge.py's Mosquitto ACL).",
        "%% Username = the client certificate's CN (mqtt.peer_cert_as_username = cn).",
    ]
    for building in sorted(set(buildings)):
        own = building_prefix(site, building, prefix)
        lines.append(_rule(building, "publish", [f"{own}/{pattern}" for pattern in OUTBOUND]))
        lines.append(_rule(building, "subscribe", [f"{own}/{pattern}" for pattern in INBOUND]))
    for consumer in consumers:
        building_prefix(site, consumer, prefix)  # the identity rule: no '/', '+', '#', '"' in a name
        reads = [f"{site}/+/{prefix}/{pattern}" for pattern in OUTBOUND]
        lines.append(_rule(consumer, "subscribe", [*reads, *(f"$share/+/{topic}" for topic in reads)]))
        lines.append(_rule(consumer, "publish", [f"{site}/+/{prefix}/{pattern}" for pattern in INBOUND]))
    lines.append("{deny, all}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render EMQX's acl.conf for the central broker")
    parser.add_argument("--building", action="append", default=[], help="building identity (repeatable)")
    parser.add_argument("--consumer", action="append", default=[], help="consumer identity (repeatable)")
    parser.add_argument("--prefix", default="entrance")
    parser.add_argument("--site", default=DEFAULT_SITE)
    parser.add_argument("--out", type=Path, default=None, help="default: stdout")
    args = parser.parse_args(argv)
    try:
        text = render_emqx_acl(tuple(args.building), tuple(args.consumer), args.prefix, args.site)
    except BridgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
