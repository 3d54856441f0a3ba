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
- one diagnostic ``sensor`` per model role: where it runs (edgetpu:usb, cpu:fallback (...));
- the diagnostic sensors a Frigate user looks for, read from the retained health: frames per second,
  outbox depth, the number of alarms (the list as attribute), CPU temperature and presentation attacks
  since the unit started. None of them says anything about who passed: counts and machine figures only;
- only where the building opts in (``[mqtt] ha_last_seen``): one "Last seen <subject id>" timestamp
  sensor per recognised subject, announced on its first recognition (``last_seen_configs``).

Every entity but "Connected" takes its availability from the unit's retained status. Unique ids carry
the project's name (``entrance_camera_<unit>_…``) so they never collide with another integration's.
Topic names match the broker ACL pattern ``homeassistant/+/<unit>/#``. Earlier releases published a
"last decision" ``sensor``; its config topic is listed with an empty payload, which makes HA remove it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from device.events.payloads import Topics
from device.types import DecisionType

HA_PREFIX = "homeassistant"
DECISION_TYPES = tuple(kind.value for kind in DecisionType)
MANUFACTURER = "entrance-camera project"
MODEL = "entrance-camera"
ID_PREFIX = "entrance_camera"
# What HA accepts as a discovery object id; subject ids are of this form (``s-7f3a9c``).
SUBJECT_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    for name, sensor in DIAGNOSTIC_SENSORS.items():
        config = {
            **available,
            "device": device,
            "origin": origin,
            "unique_id": unique_id(unit, name),
            "state_topic": topics.health,
            "entity_category": "diagnostic",
            **sensor,
        }
        if "json_attributes_template" in sensor:
            config["json_attributes_topic"] = topics.health
        configs[f"{HA_PREFIX}/sensor/{unit}/{name}/config"] = config
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


# Health figures as HA sensors. A template that renders "None" makes the sensor unknown (a unit whose
# pipeline has not reported yet, a board without a temperature file), never a made-up 0.
PIPELINE = "{% set p = value_json.pipeline | default(none) %}"
DIAGNOSTIC_SENSORS: dict[str, dict[str, Any]] = {
    "fps": {
        "name": "Frames per second",
        "value_template": PIPELINE + "{{ p.fps if p and p.fps is defined else none }}",
        "unit_of_measurement": "fps",
        "state_class": "measurement",
        "icon": "mdi:speedometer",
    },
    "outbox_depth": {
        "name": "Outbox depth",
        "value_template": "{{ value_json.outbox.depth }}",
        "unit_of_measurement": "events",
        "state_class": "measurement",
        "icon": "mdi:tray-full",
    },
    "alarms": {
        "name": "Alarms",
        "value_template": "{{ value_json.alarms | default([]) | length }}",
        "json_attributes_template": "{{ {'alarms': value_json.alarms | default([])} | tojson }}",
        "state_class": "measurement",
        "icon": "mdi:alert",
    },
    "cpu_temperature": {
        "name": "CPU temperature",
        "value_template": PIPELINE + "{{ p.cpu_temp_c if p and p.cpu_temp_c is not none else none }}",
        "device_class": "temperature",
        "unit_of_measurement": "°C",
        "state_class": "measurement",
    },
    "presentation_attacks": {
        "name": "Presentation attacks",
        # Counted since the unit started: a restart is a reset, which total_increasing expects.
        "value_template": (
            PIPELINE + "{{ p.decisions.presentation_attack | default(0) "
            "if p and p.decisions is defined else none }}"
        ),
        "state_class": "total_increasing",
        "icon": "mdi:shield-alert",
    },
}


def last_seen_configs(
    topics: Topics, unit: str, subject_id: str, seen_at: str, sw_version: str = "unknown"
) -> dict[str, bytes]:
    """The opt-in "Last seen" sensor of one subject: its discovery config and its state, both retained.

    The state is retained under the unit's discovery topics (the broker ACL lets the unit write there
    and Home Assistant read there, and nobody else), so Home Assistant shows it again after a restart.
    That is the presence disclosure the opt-in is about: whoever reads the broker's discovery topics
    learns when each pseudonymous subject last came in. The subject id is the entity's name; a display
    name never leaves the unit (Home Assistant maps ids to names on its side).
    """
    if not SUBJECT_OBJECT_ID.fullmatch(subject_id):
        raise ValueError(f"subject id {subject_id!r} cannot be part of a discovery topic")
    base = last_seen_base(unit, subject_id)
    config = {
        "device": device_info(unit, sw_version),
        "origin": {"name": MODEL, "sw_version": sw_version},
        "name": f"Last seen {subject_id}",
        "unique_id": unique_id(unit, f"last_seen_{subject_id}"),
        "state_topic": f"{base}/state",
        "device_class": "timestamp",
        "icon": "mdi:account-clock",
    }
    return {
        f"{base}/config": json.dumps(config, sort_keys=True).encode(),
        f"{base}/state": seen_at.encode(),
    }


def forget_last_seen(unit: str, subject_id: str) -> dict[str, bytes]:
    """Empty retained payloads: the subject's sensor and its state gone from the broker and from HA."""
    if not SUBJECT_OBJECT_ID.fullmatch(subject_id):
        return {}
    base = last_seen_base(unit, subject_id)
    return {f"{base}/state": b"", f"{base}/config": b""}


def last_seen_base(unit: str, subject_id: str) -> str:
    return f"{HA_PREFIX}/sensor/{unit}/last_seen_{subject_id}"
