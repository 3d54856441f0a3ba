"""Home Assistant MQTT discovery for a unit: what appears in HA, retained on the broker.

- one ``event`` entity, "Visit": every event of the unit becomes an HA event whose ``event_type`` is
  the decision (recognized, unknown, insufficient_quality, presentation_attack) with subject,
  similarity, reasons, seq and ts (when the unit decided) as attributes;
- one ``device_automation`` trigger per decision type, so "a visit was recognised at the lobby" is a
  trigger in the automation editor (Device → Entrance camera lobby-1) without templates;
- a ``binary_sensor`` "Connected" (device class connectivity) from the retained status: ``off`` once
  the unit said goodbye or its last will arrived, never ``unavailable``, so an automation can tell;
- a ``binary_sensor`` "Problem" (device class problem) that is on while the health lists an alarm,
  the alarms as its attribute;
- one diagnostic ``sensor`` per model role: where it runs (edgetpu:usb, cpu:fallback (...)).

Every entity but "Connected" takes its availability from the unit's retained status. Unique ids carry
the project's name (``entrance_camera_<unit>_…``) so they never collide with another integration's.
Topic names match the broker ACL pattern ``homeassistant/+/<unit>/#``. Earlier releases published a
"last decision" ``sensor``; its config topic is listed with an empty payload, which makes HA remove it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device.events.payloads import Topics
from device.types import DecisionType

HA_PREFIX = "homeassistant"
DECISION_TYPES = tuple(kind.value for kind in DecisionType)
MANUFACTURER = "entrance-camera project"
MODEL = "entrance-camera"
ID_PREFIX = "entrance_camera"


def unique_id(unit: str, name: str) -> str:
    """The project's namespace, then the unit: unique across every integration of one HA."""
    return f"{ID_PREFIX}_{unit}_{name}"


def device_info(unit: str, sw_version: str) -> dict[str, Any]:
    return {
        "identifiers": [f"entrance-camera-{unit}"],
        "name": f"Entrance camera {unit}",
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        # The unit id is what the installer wrote on the unit and what its certificate names.
        "serial_number": unit,
        "sw_version": sw_version,
    }


def availability(topics: Topics) -> dict[str, Any]:
    return {
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def discovery_configs(
    topics: Topics, unit: str, model_names: Mapping[str, str], sw_version: str = "unknown"
) -> dict[str, dict[str, Any] | None]:
    """Config topic -> discovery payload (retained); None: publish an empty payload (remove the entity)."""
    device = device_info(unit, sw_version)
    origin = {"name": MODEL, "sw_version": sw_version}
    available = availability(topics)
    configs: dict[str, dict[str, Any] | None] = {
        f"{HA_PREFIX}/event/{unit}/visit/config": {
            **available,
            "device": device,
            "origin": origin,
            "name": "Visit",
            "unique_id": unique_id(unit, "visit"),
            "state_topic": topics.events,
            "event_types": list(DECISION_TYPES),
            # HA's MQTT event reads event_type and keeps the other keys as the event's attributes.
            "value_template": (
                "{{ {'event_type': value_json.type, 'subject': value_json.subject, "
                "'similarity': value_json.similarity, 'reasons': value_json.reasons, "
                "'seq': value_json.seq, 'ts': value_json.ts} | tojson }}"
            ),
            "icon": "mdi:door",
        },
        f"{HA_PREFIX}/binary_sensor/{unit}/connected/config": {
            # No availability: "off" (said goodbye, or the last will) is the information here.
            "device": device,
            "origin": origin,
            "name": "Connected",
            "unique_id": unique_id(unit, "connected"),
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": topics.status,
            "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
        },
        f"{HA_PREFIX}/binary_sensor/{unit}/problem/config": {
            **available,
            "device": device,
            "origin": origin,
            "name": "Problem",
            "unique_id": unique_id(unit, "problem"),
            "device_class": "problem",
            "entity_category": "diagnostic",
            "state_topic": topics.health,
            "value_template": "{{ 'ON' if value_json.alarms | default([]) else 'OFF' }}",
            "json_attributes_topic": topics.health,
            "json_attributes_template": "{{ {'alarms': value_json.alarms | default([])} | tojson }}",
        },
        f"{HA_PREFIX}/sensor/{unit}/last_decision/config": None,
    }
    for kind in DECISION_TYPES:
        configs[f"{HA_PREFIX}/device_automation/{unit}/{kind}/config"] = {
            "automation_type": "trigger",
            "topic": topics.events,
            "type": kind,
            "subtype": "visit",
            "value_template": "{{ value_json.type }}",
            "payload": kind,
            "device": device,
            "origin": origin,
        }
    for role, model in model_names.items():
        configs[f"{HA_PREFIX}/sensor/{unit}/accelerator_{role}/config"] = {
            **available,
            "device": device,
            "origin": origin,
            "name": f"Accelerator ({role})",
            "unique_id": unique_id(unit, f"accelerator_{role}"),
            "state_topic": topics.health,
            # The pipeline reports either a state string or the model's health object per role.
            "value_template": (
                "{% set acc = (value_json.pipeline | default({})).accelerator | default({}) %}"
                "{% set m = acc['" + role + "'] | default(acc['" + model + "'] | default('unknown')) %}"
                "{{ m.state if m is mapping else m }}"
            ),
            "entity_category": "diagnostic",
            "icon": "mdi:chip",
        }
    return configs
