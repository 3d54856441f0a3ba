from __future__ import annotations

from pathlib import Path

from device.runtime.sysinfo import cpu_temperature_c


def test_the_cpu_temperature_is_read_in_degrees_from_the_kernels_millidegrees(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert cpu_temperature_c(zone) == 48.3


def test_a_machine_without_a_readable_thermal_zone_reports_no_temperature(tmp_path: Path) -> None:
    assert cpu_temperature_c(tmp_path / "missing") is None
    garbled = tmp_path / "temp"
    garbled.write_text("hot\n")
    assert cpu_temperature_c(garbled) is None
