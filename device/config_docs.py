"""What every config key means, in one line each: the comments of firmware_config/unit.defaults.toml and
the descriptions of firmware_config/unit-config.schema.json come from here (and from a field's own
``description`` in device/config.py, which wins). A test fails for a key described nowhere.

    python -m device.config_docs defaults > firmware_config/unit.defaults.toml
    python -m device.config_docs schema > firmware_config/unit-config.schema.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from device.config import UnitConfig, config_json_schema

KEY_DOCS: dict[str, str] = {
    "capture.backend": "file (video or picture folder), opencv (V4L2 or RTSP) or picamera2 (Pi camera)",
    "capture.width": "frame width asked of the camera, pixels",
    "capture.height": "frame height asked of the camera, pixels",
    "capture.fps": "frames per second asked of the camera (file backend: pace when realtime)",
    "capture.loop": "file backend: start the file again at its end instead of stopping",
    "capture.rotation": "rotate frames by this many degrees clockwise (camera mounted sideways)",
    "capture.hflip": "mirror frames left-right",
    "capture.vflip": "flip frames upside down",
    "capture.reconnect_backoff_max_s": "cap of the wait between attempts to reopen a lost camera, seconds",
    "models.detector": "face detector: a model name in the manifest",
    "models.embedder": "face embedder: a model name in the manifest",
    "models.accelerator": "auto: Edge TPU with a compiled file and a Coral, else CPU; or edgetpu, cpu",
    "models.edgetpu_device": "which Coral to use: usb, pci, or any (usb first)",
    "models.reprobe_interval_s": "while on the CPU fallback, look for the Edge TPU again this often, seconds",
    "models.cpu_threads": "interpreter threads on the CPU",
    "models.cpu_variant": "CPU file: float, int8, or auto (time both at first start; switch only "
    "for a clear margin, else keep the previous choice or float)",
    "motion.enabled": "run the detector only while something moves (or a visit is in progress)",
    "motion.downscale_width": "frames are shrunk to this width, pixels, before comparing",
    "motion.pixel_delta": "grey-level difference from the previous frame that counts a pixel as changed",
    "motion.min_changed_fraction": "share of changed pixels that counts as motion",
    "detection.score_threshold": "detector confidence needed for a face",
    "detection.nms_iou": "overlap above which two detections are the same face",
    "detection.min_face_px": "faces smaller than this, pixels, are ignored",
    "tracking.iou_threshold": "overlap with a track's last box needed to continue that track",
    "tracking.confirm_frames": "frames a face must be seen before it becomes a visit",
    "tracking.max_lost_frames": "frames without the face after which a visit ends",
    "quality.min_face_px": "smallest face, pixels, used for matching (and enrolment)",
    "quality.max_yaw_deg": "faces turned further away than this, degrees, are not used",
    "quality.min_brightness": "darker faces (mean grey level) are not used",
    "quality.max_brightness": "brighter faces (mean grey level) are not used",
    "quality.best_k": "best face samples kept per visit",
    "matching.max_samples": "samples of a visit compared with the gallery (at most best_k)",
    "matching.claim_window_s": "how long a claim waits for the claimed person, seconds",
    "gallery.master_key_path": "the unit's master key file (0600); never leaves the unit",
    "gallery.default_expiry_days": "enrolments expire after this many days unless --expires says otherwise",
    "gallery.max_templates_per_subject": "templates kept per enrolled person",
    "mqtt.enabled": "publish events to the broker (off: decisions are printed)",
    "mqtt.host": "broker host name; must match the name in the broker's certificate",
    "mqtt.port": "broker TLS port",
    "mqtt.tls": "TLS is mandatory: the broker's CA and the unit's own certificate and key",
    "mqtt.tls.ca_file": "CA certificate that signed the broker's certificate",
    "mqtt.tls.cert_file": "the unit's certificate; its name (CN) must be unit.id",
    "mqtt.tls.key_file": "the unit's private key (0600)",
    "mqtt.username": "only for brokers that also want a user name (the certificate is the identity)",
    "mqtt.topic_prefix": "topics are <prefix>/<unit id>/events|status|health|cmd",
    "mqtt.keepalive_s": "MQTT keepalive, seconds",
    "mqtt.session_expiry_s": "how long the broker keeps the unit's session (queued commands), seconds",
    "mqtt.health_interval_s": "publish the retained health this often, seconds",
    "mqtt.outbox_path": "SQLite outbox: events wait here until the broker acknowledges them",
    "mqtt.outbox_max_rows": "at most this many queued events; the oldest are dropped (counted) beyond",
    "mqtt.outbox_max_bytes": "at most this many bytes of queued events; the oldest are dropped beyond",
    "mqtt.ha_discovery": "announce the unit to Home Assistant (event entity, device triggers, sensors)",
    "logging.level": "log level of `device run` (interactive commands log warnings only)",
    "unit": "the unit itself",
    "capture": "the camera",
    "models": "model files and where they run",
    "motion": "motion gate in front of the detector",
    "detection": "face detector",
    "tracking": "faces followed across frames (one visit per track)",
    "quality": "which faces are good enough to match",
    "matching": "comparison with the enrolled residents",
    "gallery": "enrolled residents (encrypted)",
    "mqtt": "events to the broker",
    "logging": "logging",
    "liveness": "presentation-attack detection (a photo or a screen is not a person)",
    "limits": "bounds on what the unit's commands accept from files",
}


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, field info, is a section) for every field, depth first."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        yield prefix + name, field, is_section
        if is_section:
            assert isinstance(annotation, type)
            yield from _fields(annotation, f"{prefix}{name}.")


def description(key: str) -> str | None:
    for dotted, field, _ in _fields(UnitConfig):
        if dotted == key:
            return field.description or KEY_DOCS.get(key)
    return None


def undocumented_keys() -> list[str]:
    return [key for key, _, _ in _fields(UnitConfig) if not description(key)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def defaults_toml() -> str:
    """firmware_config/unit.defaults.toml: every key, its default and what it means."""
    lines = [
        "# Every key of the unit config with its default and what it means. Generated by",
        "# `python -m device.config_docs defaults` from device/config.py and device/config_docs.py; a test",
        "# keeps them equal. A unit's own config only needs the keys it changes.",
    ]

    def section(model: type[BaseModel], values: dict[str, Any], prefix: str) -> None:
        lines.extend(["", f"[{prefix}]", f"# {description(prefix)}"])
        subsections = []
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                subsections.append((annotation, values[name], key))  # TOML: tables after the keys
            elif values[name] is None:
                lines.append(f"# {name}: {description(key)} (not set by default)")
            else:
                lines.extend([f"# {description(key)}", f"{name} = {_toml_value(values[name])}"])
        for annotation, sub_values, key in subsections:
            section(annotation, sub_values, key)

    defaults = UnitConfig().model_dump(mode="python")
    for name, field in UnitConfig.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        section(annotation, defaults[name], name)
    return "\n".join(lines) + "\n"


def described_schema() -> dict[str, Any]:
    """The config JSON schema with a description on every property."""
    schema = config_json_schema()
    definitions = schema.get("$defs", {})

    def describe(node: dict[str, Any], model: type[BaseModel], prefix: str) -> None:
        for name, prop in node.get("properties", {}).items():
            key = prefix + name
            text = description(key)
            if text and "description" not in prop:
                prop["description"] = text
            field = model.model_fields[name]
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                target = definitions.get(annotation.__name__)
                if target is not None:
                    describe(target, annotation, key + ".")

    describe(schema, UnitConfig, "")
    return schema


def main(argv: list[str]) -> int:
    if argv == ["defaults"]:
        sys.stdout.write(defaults_toml())
        return 0
    if argv == ["schema"]:
        sys.stdout.write(json.dumps(described_schema(), indent=2, sort_keys=True) + "\n")
        return 0
    print("usage: python -m device.config_docs defaults|schema", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
