"""Readings about the unit itself (not about people) for the health topic."""

from __future__ import annotations

from pathlib import Path

# On a Raspberry Pi thermal_zone0 is the SoC ("cpu-thermal"); the kernel reports millidegrees Celsius.
CPU_THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c(zone: Path = CPU_THERMAL_ZONE) -> float | None:
    """The CPU temperature in °C, or None where the machine has no readable thermal zone (VMs, CI)."""
    try:
        millidegrees = int(zone.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    return round(millidegrees / 1000.0, 1)
