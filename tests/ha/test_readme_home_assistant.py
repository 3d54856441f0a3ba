"""The README's Home Assistant section as `make ha-check` reads it (the check itself needs Home Assistant;
these pin what it loads and what it installs, and run in `make test`)."""

from __future__ import annotations

import re
from pathlib import Path

from ha_check import EXPECTED, README_SUBJECT, VISIT, readme_automation_ids, readme_section, yaml_blocks

REPO = Path(__file__).resolve().parents[2]


def readme_blocks() -> list[str]:
    return yaml_blocks(readme_section((REPO / "README.md").read_text()))


def readme_items() -> list[str]:
    """Each automation of the README as text (HA's own YAML loader reads them in `make ha-check`)."""
    return [item for block in readme_blocks() for item in re.split(r"\n(?=- )", block.strip())]


def test_every_readme_automation_is_an_automations_yaml_item_the_check_knows() -> None:
    items = readme_items()
    # Items for automations.yaml (a list): no top-level `automation:` key, which in configuration.yaml
    # would replace the automations made in the UI.
    assert items and all(item.startswith("- id: ") for item in items)
    # The keys of HA 2024.10 and later, and an expectation in the check for each automation.
    assert all("\n  triggers:\n" in item and "\n  actions:\n" in item for item in items)
    assert sorted(readme_automation_ids(readme_blocks())) == sorted(EXPECTED)


def test_no_readme_trigger_on_the_event_entity_fires_when_it_comes_back_from_unavailable() -> None:
    on_the_entity = [item for item in readme_items() if f"entity_id: {VISIT}" in item]
    assert on_the_entity
    for item in on_the_entity:
        trigger = item[item.index(f"entity_id: {VISIT}") :].split("\n  conditions:")[0]
        assert "not_from: unavailable" in trigger, item
        # Events queued in the outbox during an outage arrive late: a door must not open for them.
        assert "attributes.ts" in item, item


def test_the_example_resident_is_the_one_placeholder_the_check_replaces() -> None:
    assert README_SUBJECT in "".join(readme_blocks())


def test_the_ha_lock_pins_home_assistant_and_what_it_would_install_at_run_time() -> None:
    lock = (REPO / "requirements" / "ha.lock").read_text()
    version = re.search(r"^HA_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert version is not None
    assert f"\nhomeassistant=={version.group(1)} " in lock
    # The frontend (HA starts in recovery mode without it) and the MQTT integration's client.
    for name in ("home-assistant-frontend==", "paho-mqtt==2."):
        assert f"\n{name}" in lock, name


def test_the_readme_names_every_event_type_discovery_publishes() -> None:
    from device.events.ha_discovery import discovery_configs
    from device.events.payloads import Topics

    configs = discovery_configs(Topics("entrance", "lobby-1"), "lobby-1", {})
    (published,) = [c["event_types"] for c in configs.values() if c is not None and "event_types" in c]
    assert "presentation_attack" in published
    section = readme_section((REPO / "README.md").read_text())
    listed = section[section.index("`event_type`") : section.index("with `subject`")]
    assert re.findall(r"`([a-z_]+)`", listed)[1:] == list(published)
    triggers = section[section.index("**device triggers**") : section.index("no templates needed")]
    assert re.findall(r'`"visit" ([a-z_]+)`', triggers) == list(published)


def test_every_home_assistant_example_in_the_readme_uses_the_current_keys() -> None:
    """Both the short example in the events section and the section's automations: `triggers:` with
    `trigger:`, `actions:` with `action:` (HA 2024.10), never the older `platform:` or `service:`."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("- Home Assistant can do the same")
    inline = readme[start : readme.index("\n- ", start + 1)]
    assert "`triggers: {trigger: mqtt," in inline and "`actions: {action: " in inline
    for text in (inline, readme_section(readme)):
        assert "platform:" not in text and "service:" not in text and "trigger:" in text


def test_the_readme_names_every_diagnostic_sensor_discovery_publishes() -> None:
    from device.events.ha_discovery import DIAGNOSTIC_SENSORS

    section = readme_section((REPO / "README.md").read_text())
    listed = section[
        section.index("the diagnostic sensors a Frigate user looks for") : section.index("Machine figures")
    ]
    assert [sensor["name"] for sensor in DIAGNOSTIC_SENSORS.values()] == [
        " ".join(name.split()) for name in re.findall(r'"([^"]+)"', listed)
    ]
    assert all(
        sensor.get("entity_category", "diagnostic") == "diagnostic" for sensor in DIAGNOSTIC_SENSORS.values()
    )


def test_the_readme_keeps_display_names_in_home_assistant_and_last_seen_opt_in() -> None:
    """The id -> name mapping is Home Assistant configuration (the README's automation), never a unit
    setting; the unit's "last seen" is an opt-in that is off by default."""
    from device.config import UnitConfig

    named = [item for item in readme_items() if "residents:" in item]
    assert len(named) == 1 and f"{README_SUBJECT}: Alice" in named[0]
    assert "residents.get(trigger.payload_json.subject" in named[0]
    mqtt = UnitConfig().mqtt
    assert mqtt.ha_last_seen is False
    assert not [key for key in type(mqtt).model_fields if "name" in key and key != "username"]
    section = readme_section((REPO / "README.md").read_text())
    assert "`ha_last_seen = true`" in section and "presence disclosure" in section
