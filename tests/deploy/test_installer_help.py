"""deploy/unit/install-unit.sh for an installer: a complete --help (every option the script parses) and a
--dry-run that works on any machine, saying plainly that without compiled Edge TPU files the unit runs on
the CPU (issue 17)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "deploy" / "unit" / "install-unit.sh"


def installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_option_the_script_parses() -> None:
    parsed = set(re.findall(r"^\s+(--[a-z-]+)(?:\|-h)?\)", INSTALLER.read_text(), flags=re.MULTILINE))
    assert {"--trust-coral-files", "--dry-run", "--coral-pair", "--unit-id"} <= parsed
    result = installer("--help")
    assert result.returncode == 0
    for option in parsed:
        assert re.search(rf"^\s+{re.escape(option)}\b", result.stdout, flags=re.MULTILINE), option
    assert result.stdout.rstrip().endswith(".")  # whole sentences, not cut mid-way
    assert "runs on the CPU" in result.stdout


def test_dry_run_works_on_an_x86_laptop_with_another_os(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=ubuntu\nVERSION_CODENAME=noble\n")
    result = installer(
        "--dry-run", "--machine", "x86_64", "--os-release", str(os_release), "--unit-id", "lobby-1"
    )
    assert result.returncode == 0, result.stderr
    assert "this machine is x86_64" in result.stdout and "plan for bookworm" in result.stdout
    assert "+ systemctl enable" in result.stdout
    assert "no compiled Edge TPU files: the unit runs on the CPU" in result.stdout


def test_a_bad_unit_id_is_explained_in_words() -> None:
    result = installer("--dry-run", "--unit-id", "Lobby 1")
    assert result.returncode == 1
    assert "lowercase letters, digits and '-'" in result.stderr and "^[" not in result.stderr


def plan(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    return installer("--dry-run", "--machine", "aarch64", "--os-release", str(os_release), *options)


def test_a_sealed_key_source_has_systemd_unseal_the_key_for_every_service_that_opens_the_gallery(
    tmp_path: Path,
) -> None:
    """Issue 25 point 4: the service user may not unseal a host or TPM credential, so systemd must."""
    result = plan(tmp_path, "--key-source", "host-credential")
    assert result.returncode == 0, result.stderr
    for unit in (
        "entrance-camera.service",
        "entrance-camera-selftest.service",
        "entrance-camera-purge.service",
    ):
        credential = (
            "LoadCredentialEncrypted=entrance-camera-master-key:/etc/entrance-camera/secrets/master.key"
        )
        assert f"/etc/systemd/system/{unit}.d/master-key.conf: {credential}" in result.stdout, unit
    # sealed by root, then the service user's file
    assert re.search(r"^\+ .*generate_master_key.*host-credential$", result.stdout, flags=re.MULTILINE)
    assert "+ chown entrance-camera:entrance-camera /etc/entrance-camera/secrets/master.key" in result.stdout


def test_a_plain_key_file_gets_no_credential_drop_in(tmp_path: Path) -> None:
    result = plan(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LoadCredentialEncrypted" not in result.stdout
    assert "runuser -u entrance-camera" in result.stdout  # the plain key is made by the service user


def test_an_unknown_key_source_is_refused_in_words(tmp_path: Path) -> None:
    result = plan(tmp_path, "--key-source", "usb-stick")
    assert result.returncode != 0
    assert "--key-source must be file, host-credential or tpm2" in result.stderr


def test_the_fleet_playbook_hands_its_key_source_to_the_installer() -> None:
    playbook = (REPO / "deploy" / "fleet" / "site.yml").read_text()
    defaults = (REPO / "deploy" / "fleet" / "group_vars" / "all.yml").read_text()
    assert "'--key-source', key_source" in playbook
    assert re.search(r"^key_source: file$", defaults, flags=re.MULTILINE)
