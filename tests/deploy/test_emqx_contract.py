"""Issue 27: the clustered-broker path keeps the project's contract in a tested config (EMQX 5; not run
here: EMQX is in neither PyPI, Debian nor npm). The checked-in ``deploy/broker/emqx/acl.conf`` is what
the renderer makes, and it answers exactly like the central Mosquitto ACL for every identity, action and
topic tried; ``emqx.conf`` keeps TLS-only, required client certificates, CN as username, deny by default."""

from __future__ import annotations

import itertools
import re

from deploy.broker.bridge import render_central_acl
from deploy.broker.emqx import HERE, render_emqx_acl

BUILDINGS = ("north", "south")
CONSUMERS = ("archive", "doors")


def matches(pattern: str, topic: str) -> bool:
    """MQTT matching of a filter (``+``, ``#``) against a concrete topic."""
    levels, wanted = pattern.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(wanted) or level not in ("+", wanted[index]):
            return False
    return len(levels) == len(wanted)


def mosquitto_rules(acl: str) -> dict[str, dict[str, list[str]]]:
    rules: dict[str, dict[str, list[str]]] = {}
    user = ""
    for line in acl.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            rules[user] = {"read": [], "write": []}
        elif line.startswith("topic "):
            _, access, topic = line.split()
            rules[user][access].append(topic)
    return rules


def emqx_rules(acl: str) -> tuple[dict[str, dict[str, list[str]]], str]:
    rules: dict[str, dict[str, list[str]]] = {}
    for who, action, topics in re.findall(r'\{allow, \{username, "([^"]+)"\}, (\w+), \[(.*)\]\}\.', acl):
        rules.setdefault(who, {}).setdefault(action, []).extend(re.findall(r'"([^"]+)"', topics))
    return rules, acl.strip().splitlines()[-1]


def topics() -> list[str]:
    leaves = ["events", "status", "health", "cmd/claim", "cmd", "other", "events/x"]
    combos = itertools.product(
        ["site", "other"], [*BUILDINGS, "east"], ["entrance", "x"], ["lobby-1"], leaves
    )
    return ["/".join(parts) for parts in combos] + ["site/north/entrance/events", "#", "$SYS/broker"]


def test_the_checked_in_acl_is_the_rendered_one() -> None:
    rendered = render_emqx_acl(BUILDINGS, CONSUMERS, "entrance")
    assert (HERE / "acl.conf").read_text() == rendered


def test_emqx_rules_answer_like_the_central_mosquitto_acl() -> None:
    mosquitto = mosquitto_rules(render_central_acl(BUILDINGS, CONSUMERS, "entrance"))
    emqx, last = emqx_rules((HERE / "acl.conf").read_text())
    assert last == "{deny, all}."
    assert set(emqx) == set(mosquitto) == {*BUILDINGS, *CONSUMERS}
    checked = 0
    for who, topic in itertools.product([*BUILDINGS, *CONSUMERS, "stranger"], topics()):
        mine, theirs = mosquitto.get(who, {}), emqx.get(who, {})
        may_write = any(matches(p, topic) for p in mine.get("write", []))
        may_read = any(matches(p, topic) for p in mine.get("read", []))
        assert any(matches(p, topic) for p in theirs.get("publish", [])) == may_write, (who, topic)
        assert any(matches(p, topic) for p in theirs.get("subscribe", [])) == may_read, (who, topic)
        # A consumer's shared subscription is allowed exactly where its plain one is.
        shared = f"$share/g/{topic}"
        assert any(matches(p, shared) for p in theirs.get("subscribe", [])) == (may_read and who in CONSUMERS)
        checked += 1
    assert checked == 5 * len(topics()) > 400
    # What the contract is about, spelled out once.
    assert any(matches(p, "site/north/entrance/lobby-1/events") for p in emqx["north"]["publish"])
    assert not any(matches(p, "site/south/entrance/lobby-1/events") for p in emqx["north"]["publish"])


def test_emqx_conf_is_tls_only_with_client_certificates_and_deny_by_default() -> None:
    text = (HERE / "emqx.conf").read_text()
    settings = {
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("##") and "=" in line
    }
    for wanted in (
        "listeners.tcp.default.enable = false",
        "listeners.ws.default.enable = false",
        "listeners.wss.default.enable = false",
        "verify = verify_peer",
        "fail_if_no_peer_cert = true",
        "peer_cert_as_username = cn",
        "no_match = deny",
        "type = file",
    ):
        assert wanted in settings, wanted
    assert text.count("{") == text.count("}")
    assert 'path = "etc/acl.conf"' in text
