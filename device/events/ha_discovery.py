"""Home Assistant MQTT discovery for a unit: what appears in HA, retained on the broker.

- one ``event`` entity, "Visit": every event of the unit becomes an HA event whose ``event_type`` is
  the decision (recognized, unknown, insufficient_quality) with subject, similarity and reasons as
  attributes;
- one ``device_automation`` trigger per decision type, so "a visit was recognised at the lobby" is a
  trigger in the automation editor (Device → Entrance camera lobby-1) without templates;
- one diagnostic ``sensor`` per model role: where it runs (edgetpu:usb, cpu:fallback (...)).

Every entity takes its availability from the unit's retained status. Topic names match the broker ACL
pattern ``homeassistant/+/<unit>/#``. Earlier releases published a "last decision" ``sensor``; its
config topic is listed with an empty payload, which makes HA remove that entity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device.events.payloads import Topics
from device.types import DecisionType

HA_PREFIX = "homeassistant"
DECISION_TYPES = tuple(kind.value for kind in DecisionType)


def device_info(unit: str) -> dict[str, Any]:
    return {
        "identifiers": [f"entrance-camera-{unit}"],
        "name": f"Entrance camera {unit}",
        "model": "entrance-camera",
    }


def discovery_configs(
    topics: Topics, unit: str, model_names: Mapping[str, str]
) -> dict[str, dict[str, Any] | None]:
    """Config topic -> discovery payload (retained); None: publish an empty payload (remove the entity)."""
    device = device_info(unit)
    availability = {
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    configs: dict[str, dict[str, Any] | None] = {
        f"{HA_PREFIX}/event/{unit}/visit/config": {
            **availability,
            "device": device,
            "name": "Visit",
            "unique_id": f"{unit}_visit",
            "state_topic": topics.events,
            "event_types": list(DECISION_TYPES),
            # HA's MQTT event reads event_type and keeps the other keys as the event's attributes.
            "value_template": (
                "{{ {'event_type': value_json.type, 'subject': value_json.subject, "
                "'similarity': value_json.similarity, 'reasons': value_json.reasons, "
                "'seq': value_json.seq} | tojson }}"
            ),
            "icon": "mdi:door",
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
        }
    for role, model in model_names.items():
        configs[f"{HA_PREFIX}/sensor/{unit}/accelerator_{role}/config"] = {
            **availability,
            "device": device,
            "name": f"Accelerator ({role})",
            "unique_id": f"{unit}_accelerator_{role}",
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
