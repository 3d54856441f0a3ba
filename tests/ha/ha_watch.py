"""Runs in Home Assistant's own venv (.venv-ha, aiohttp comes with HA): subscribes to HA's event bus
over its websocket API and prints one JSON line per ``automation_triggered`` and per state change of
the entities given, until killed. ``tests/ha/ha_check.py`` starts it and counts the lines.

    .venv-ha/bin/python tests/ha/ha_watch.py URL TOKEN ENTITY...
    .venv-ha/bin/python tests/ha/ha_watch.py URL TOKEN --query IDENTIFIER   # one device, as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp


def line_for(event: dict[str, Any], entities: set[str]) -> dict[str, Any] | None:
    kind = event.get("event_type")
    data = event.get("data", {})
    if kind == "automation_triggered":
        return {"kind": kind, "entity_id": data.get("entity_id"), "at": event.get("time_fired")}
    if kind == "state_changed" and data.get("entity_id") in entities:
        old, new = data.get("old_state") or {}, data.get("new_state") or {}
        return {
            "kind": kind,
            "entity_id": data["entity_id"],
            "from": old.get("state"),
            "to": new.get("state"),
            "attributes": new.get("attributes", {}),
            "at": event.get("time_fired"),
        }
    return None


async def authenticated(ws: aiohttp.ClientWebSocketResponse, token: str) -> None:
    await ws.receive_json()  # auth_required
    await ws.send_json({"type": "auth", "access_token": token})
    reply = await ws.receive_json()
    if reply.get("type") != "auth_ok":
        raise SystemExit(f"ha_watch: websocket auth refused: {reply}")


async def command(ws: aiohttp.ClientWebSocketResponse, number: int, kind: str, **data: Any) -> Any:
    await ws.send_json({"id": number, "type": kind, **data})
    while True:
        reply = await ws.receive_json()
        if reply.get("id") == number and reply.get("type") == "result":
            if not reply.get("success"):
                raise SystemExit(f"ha_watch: {kind} failed: {reply}")
            return reply["result"]


async def query(url: str, token: str, identifier: str) -> None:
    """The device whose MQTT identifier is given, its entities and its device triggers."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/api/websocket") as ws:
        await authenticated(ws, token)
        devices = await command(ws, 1, "config/device_registry/list")
        device = next(d for d in devices if ["mqtt", identifier] in d["identifiers"])
        entities = await command(ws, 2, "config/entity_registry/list")
        triggers = await command(ws, 3, "device_automation/trigger/list", device_id=device["id"])
        mine = [e["entity_id"] for e in entities if e.get("device_id") == device["id"]]
        print(json.dumps({"device": device, "entities": mine, "triggers": triggers}))


async def watch(url: str, token: str, entities: set[str]) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/api/websocket") as ws:
        await authenticated(ws, token)
        for number, kind in enumerate(("automation_triggered", "state_changed"), start=1):
            await ws.send_json({"id": number, "type": "subscribe_events", "event_type": kind})
        subscribed = 0
        async for message in ws:
            payload = json.loads(message.data)
            if payload.get("type") == "result":
                subscribed += 1
                if subscribed == 2:
                    print(json.dumps({"kind": "subscribed"}), flush=True)
                continue
            if payload.get("type") == "event" and (line := line_for(payload["event"], entities)):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    if sys.argv[3:4] == ["--query"]:
        asyncio.run(query(sys.argv[1], sys.argv[2], sys.argv[4]))
    else:
        asyncio.run(watch(sys.argv[1], sys.argv[2], set(sys.argv[3:])))
