"""The shipped systemd units, udev rule and installer config agree with each other and with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from device.cli import EXIT_USAGE
from device.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows repeated keys, so no dict."""
    section = ""
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


def values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in directives(path) if k == key]


# What a oneshot and a long-running service legitimately differ in; everything else must match.
SANDBOX_EXCLUDED = {
    "Type",
    "RemainAfterExit",
    "ExecStart",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "NotifyAccess",
    "WatchdogSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
}


def sandbox(path: Path) -> list[tuple[str, str]]:
    return [
        (k, v) for section, k, v in directives(path) if section == "Service" and k not in SANDBOX_EXCLUDED
    ]


def test_the_service_is_notify_with_a_watchdog_and_no_crash_loop() -> None:
    unit = SYSTEMD / "entrance-camera.service"
    assert values(unit, "Type") == ["notify"]
    assert int(values(unit, "WatchdogSec")[0]) > 0
    assert values(unit, "Restart") == ["on-failure"]
    assert values(unit, "StartLimitBurst") and values(unit, "StartLimitIntervalSec")
    # device/cli.py exits 2 on a config error; restarting cannot fix that.
    assert values(unit, "RestartPreventExitStatus") == [str(EXIT_USAGE)]


def test_the_service_has_no_privileges_and_reaches_only_camera_and_tpu() -> None:
    unit = SYSTEMD / "entrance-camera.service"
    assert values(unit, "User") == ["entrance-camera"]
    assert values(unit, "CapabilityBoundingSet") == [""]
    assert values(unit, "NoNewPrivileges") == ["yes"]
    assert values(unit, "ProtectSystem") == ["strict"]
    assert values(unit, "ReadWritePaths") == ["/var/lib/entrance-camera /etc/entrance-camera/secrets"]
    assert values(unit, "DevicePolicy") == ["closed"]
    allowed = {value.split()[0] for value in values(unit, "DeviceAllow")}
    assert allowed == {"char-video4linux", "char-media", "char-dma_heap", "char-usb_device", "char-apex"}
    assert values(unit, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert values(unit, "SocketBindDeny") == ["any"]


def test_the_selftest_runs_in_the_same_sandbox_and_gates_the_service() -> None:
    service = SYSTEMD / "entrance-camera.service"
    selftest = SYSTEMD / "entrance-camera-selftest.service"
    assert sandbox(selftest) == sandbox(service)
    assert "entrance-camera-selftest.service" in values(service, "Requires")
    assert values(selftest, "ExecStart")[0].endswith(" selftest")


def test_the_purge_timer_runs_the_purge_daily_without_network_or_devices() -> None:
    timer = SYSTEMD / "entrance-camera-purge.timer"
    purge = SYSTEMD / "entrance-camera-purge.service"
    assert values(timer, "OnCalendar") == ["daily"]
    assert values(timer, "Persistent") == ["yes"]
    assert " purge-expired " in values(purge, "ExecStart")[0]
    assert values(purge, "PrivateNetwork") == ["yes"]
    assert values(purge, "DeviceAllow") == []


@pytest.mark.parametrize("ids", ["1a6e", "089a", "18d1", "9302"])
def test_the_udev_rule_covers_both_coral_usb_identities(ids: str) -> None:
    rules = (ROOT / "deploy" / "udev" / "99-entrance-camera-coral.rules").read_text()
    assert f'"{ids}"' in rules
    assert all(
        'GROUP="entrance-camera"' in line for line in rules.splitlines() if line.startswith("SUBSYSTEM")
    )


@pytest.mark.parametrize("key_source", ["file", "host-credential", "tpm2"])
def test_the_installer_config_is_valid_and_keeps_state_where_the_sandbox_allows(
    tmp_path: Path, key_source: str
) -> None:
    template = (ROOT / "deploy" / "unit" / "unit.toml.in").read_text()
    text = template.replace("@UNIT_ID@", "lobby-1").replace("@KEY_SOURCE@", key_source)
    path = tmp_path / "unit.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.gallery.key_source == key_source
    writable = [Path(p) for p in values(SYSTEMD / "entrance-camera.service", "ReadWritePaths")[0].split()]
    for state_path in (config.unit.state_dir, config.gallery.path, config.mqtt.outbox_path):
        assert any(state_path == folder or folder in state_path.parents for folder in writable)
    # the gallery keyring and audit head are written beside the master key
    assert config.gallery.master_key_path.parent == Path("/etc/entrance-camera/secrets")
    assert config.gallery.master_key_path.parent in writable
    purge = SYSTEMD / "entrance-camera-purge.service"
    assert values(purge, "ReadWritePaths") == values(SYSTEMD / "entrance-camera.service", "ReadWritePaths")
    exec_start = values(SYSTEMD / "entrance-camera.service", "ExecStart")[0]
    assert re.search(r"--config /etc/entrance-camera/unit\.toml run$", exec_start)


@pytest.mark.parametrize(
    "name",
    [
        "entrance-camera.service",
        "entrance-camera-selftest.service",
        "entrance-camera-purge.service",
        "entrance-camera-door.service",
    ],
)
def test_no_unit_may_write_a_core_file(name: str) -> None:
    """Issue 14, finding 6: a core file would hold keys, templates and frames."""
    assert values(SYSTEMD / name, "LimitCORE") == ["0"]


def test_the_device_process_is_not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0) at start: no core file and no ptrace by other processes of the same user."""
    import subprocess
    import sys

    pr_get_dumpable = 3
    code = (
        "import ctypes; from device.cli import main; main(['config', 'check']);"
        f"print(ctypes.CDLL(None).prctl({pr_get_dumpable}, 0, 0, 0, 0))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "0", result.stdout + result.stderr


DOOR = SYSTEMD / "entrance-camera-door.service"
# Where the door's machine legitimately differs from the camera's: its own user, paths and devices
# (GPIO instead of camera and Coral), its settings file, and no netlink (no USB hotplug to watch).
DOOR_DIFFERS = {
    "User",
    "Group",
    "SupplementaryGroups",
    "WorkingDirectory",
    "Environment",
    "EnvironmentFile",
    "ReadWritePaths",
    "StateDirectory",
    "DeviceAllow",
    "RestrictAddressFamilies",
}


def test_the_door_is_a_notify_service_with_a_watchdog_and_no_crash_loop() -> None:
    assert values(DOOR, "Type") == ["notify"]
    assert values(DOOR, "NotifyAccess") == ["main"]
    assert values(DOOR, "WatchdogSec") == ["30"]  # as the README says
    assert values(DOOR, "Restart") == ["on-failure"]
    assert values(DOOR, "StartLimitBurst") and values(DOOR, "StartLimitIntervalSec")
    assert values(DOOR, "RestartPreventExitStatus") == [str(EXIT_USAGE)]


def test_the_door_keeps_the_cameras_sandbox_but_reaches_only_gpio() -> None:
    camera = [(k, v) for k, v in sandbox(SYSTEMD / "entrance-camera.service") if k not in DOOR_DIFFERS]
    door = [(k, v) for k, v in sandbox(DOOR) if k not in DOOR_DIFFERS]
    assert door == camera
    assert values(DOOR, "User") == ["entrance-door"]
    assert values(DOOR, "DevicePolicy") == ["closed"]
    assert values(DOOR, "DeviceAllow") == ["char-gpiochip rw"]
    assert values(DOOR, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"]
    assert values(DOOR, "ReadWritePaths") == ["/var/lib/entrance-camera-door"]


def test_the_doors_command_line_is_one_the_cli_accepts_with_its_audit_in_the_writable_folder() -> None:
    from device.cli import build_parser
    from device.commands.door import run_door

    settings = {
        "DOOR_UNIT": "lobby-1",
        "DOOR_RELAY_GPIO": "17",
        "MQTT_HOST": "broker.lan",
        "MQTT_PORT": "8883",
    }
    exec_start = values(DOOR, "ExecStart")[0]
    for name, value in settings.items():
        exec_start = exec_start.replace("${" + name + "}", value)
    program, *argv = exec_start.split()
    assert program == "/opt/entrance-camera/venv/bin/device"
    args = build_parser().parse_args(argv)
    assert args.handler is run_door
    assert (args.unit, args.relay_gpio, args.host, args.port) == ("lobby-1", 17, "broker.lan", 8883)
    assert args.timeout == 0.0  # a service runs until stopped
    assert Path(values(DOOR, "ReadWritePaths")[0]) in args.audit.parents
