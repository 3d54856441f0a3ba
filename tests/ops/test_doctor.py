"""``device doctor`` against a real Mosquitto (tests/broker.py): passes on a correctly set up unit and
catches each misconfiguration of issue 17 with a ✗ line that names the problem and the fix."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from device.cli import main
from device.lab.demo import toml_text

UNIT_ID = "doctor-unit"


def write_unit(tmp_path: Path, broker: Any, face_images: dict[str, Path], **changes: Any) -> Path:
    """A unit made like the demo's: `device init`, a picture folder as camera, the broker's [mqtt]."""
    unit_dir = tmp_path / "unit"
    if not unit_dir.exists():
        assert main(["init", "--dir", str(unit_dir), "--unit-id", UNIT_ID, "--operator", "installer"]) == 0
    camera = tmp_path / "camera"
    camera.mkdir(exist_ok=True)
    shutil.copy(face_images["obama.jpg"], camera / "0001.jpg")
    data: dict[str, Any] = tomllib.loads((unit_dir / "unit.toml").read_text())
    data["capture"] = {"backend": "file", "source": str(camera)}
    data["models"] = {**data.get("models", {}), "accelerator": "cpu"}
    data["mqtt"] = broker.mqtt_config(UNIT_ID)
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    config = unit_dir / "doctor.toml"
    config.write_text(toml_text(data))
    return config


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["doctor", "--config", str(config)])
    return code, capsys.readouterr().out.splitlines()


def failed_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


def test_doctor_passes_on_a_correct_unit_and_says_so_per_check(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = doctor(write_unit(tmp_path, mosquitto_broker, face_images), capsys)
    assert code == 0, "\n".join(lines)
    names = [line.split(":")[0] for line in lines if line.startswith("✓")]
    for expected in (
        "config",
        "models",
        "mqtt.tls.key_file",
        "gallery key",
        "audit log",
        "certificate",
        "broker",
        "capture",
    ):
        assert f"✓ {expected}" in names
    assert any(line.startswith("✓ accelerator: CPU") for line in lines)
    assert lines[-1].startswith("all ")


def test_doctor_says_when_the_audit_log_was_cut(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_unit(tmp_path, mosquitto_broker, face_images)
    log = next(tmp_path.rglob("audit.jsonl"))
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))  # the last entry cut away
    code, out = doctor(config, capsys)
    assert code != 0
    assert [line for line in failed_lines(out) if line.startswith("✗ audit log")], out


def test_config_check_deep_is_the_doctor(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_unit(tmp_path, mosquitto_broker, face_images)
    (tmp_path / "camera" / "0001.jpg").unlink()
    (tmp_path / "camera").rmdir()
    assert main(["config", "check", "--config", str(config)]) == 0  # the shallow check only reads the file
    capsys.readouterr()
    assert main(["config", "check", "--deep", "--config", str(config)]) == 1
    assert any(line.startswith("✗ capture") for line in capsys.readouterr().out.splitlines())


def test_missing_key_file(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_unit(tmp_path, mosquitto_broker, face_images)
    _, key = mosquitto_broker.cert_for(UNIT_ID)
    moved = tmp_path / "elsewhere.key"
    config.write_text(config.read_text().replace(str(key), str(moved)))
    code, lines = doctor(config, capsys)
    assert code == 1
    failed = failed_lines(lines)
    assert any(line.startswith("✗ mqtt.tls.key_file") and str(moved) in line for line in failed), lines
    assert "fix:" in "\n".join(lines)


def test_missing_video_source(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_unit(tmp_path, mosquitto_broker, face_images, capture={"source": str(tmp_path / "no.mp4")})
    code, lines = doctor(config, capsys)
    assert code == 1
    assert [line for line in failed_lines(lines) if line.startswith("✗ capture")], lines
    # an empty source is a config problem now: the doctor stops at the config, as `config check` does
    config = write_unit(tmp_path, mosquitto_broker, face_images, capture={"source": ""})
    code, _ = doctor(config, capsys)
    assert code == 2


def test_unit_id_not_the_certificate_name(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_unit(tmp_path, mosquitto_broker, face_images, unit={"id": "lobby-2"})
    code, lines = doctor(config, capsys)
    assert code == 1
    failed = failed_lines(lines)
    assert any(
        line.startswith("✗ certificate") and f"'{UNIT_ID}'" in line and "'lobby-2'" in line for line in failed
    ), lines


def test_wrong_ca(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.broker.pki import Pki

    other = Pki(tmp_path / "other-pki")
    other.init(ca_name="some other CA")
    config = write_unit(tmp_path, mosquitto_broker, face_images)
    config.write_text(config.read_text().replace(str(mosquitto_broker.ca_file), str(other.ca_cert_path)))
    code, lines = doctor(config, capsys)
    assert code == 1
    failed = failed_lines(lines)
    broker_line = next(line for line in failed if line.startswith("✗ broker"))
    assert f"{mosquitto_broker.host}:{mosquitto_broker.port}" in broker_line
    assert str(other.ca_cert_path) in broker_line and "does not chain" in broker_line
    assert any(line.startswith("✗ certificate") for line in failed)


def test_certificate_from_a_ca_the_broker_does_not_trust(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = mosquitto_broker.foreign_cert_for(UNIT_ID)
    good_cert, good_key = mosquitto_broker.cert_for(UNIT_ID)
    config = write_unit(tmp_path, mosquitto_broker, face_images)
    config.write_text(config.read_text().replace(str(good_cert), str(cert)).replace(str(good_key), str(key)))
    code, lines = doctor(config, capsys)
    assert code == 1
    assert any(line.startswith("✗ certificate") and "not issued by" in line for line in failed_lines(lines))


def test_broker_down(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from broker import free_port

    port = free_port()
    config = write_unit(tmp_path, mosquitto_broker, face_images, mqtt={"port": port})
    code, lines = doctor(config, capsys)
    assert code == 1
    broker_line = next(line for line in failed_lines(lines) if line.startswith("✗ broker"))
    assert f":{port}" in broker_line and "nothing accepts connections" in broker_line


def test_a_file_the_service_user_cannot_read(tmp_path: Path) -> None:
    from device.ops.doctor import Reader, file_check

    secret = tmp_path / "unit.key"
    secret.write_text("k")
    secret.chmod(0o600)
    nobody = Reader("nobody")
    check = file_check("mqtt.tls.key_file", secret, nobody, missing_fix="")
    assert not check.ok and "not readable by nobody" in check.detail and "chown nobody" in check.fix
    assert file_check("mqtt.tls.key_file", secret, Reader(None), missing_fix="").ok  # its owner reads it


def cpu_files_line(lines: list[str]) -> str:
    found = [line for line in lines if line.startswith("✓ cpu files:")]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


@pytest.mark.slow
def test_doctor_says_which_cpu_file_each_model_runs_and_why_once_chosen(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every model the unit opens, PAD's too: not timed before the first start, then the kept choice."""
    from device.config import load_config
    from device.vision.faces import load_stages
    from device.vision.liveness import open_liveness

    config_path = write_unit(tmp_path, mosquitto_broker, face_images)
    _, lines = doctor(config_path, capsys)
    before = cpu_files_line(lines)
    for model in ("blazeface_full_range", "dlib_resnet_v1", "minifasnet_v2", "minifasnet_v1se"):
        assert f"{model} not timed yet" in before
    assert "face_landmark float (only CPU file)" in before

    config = load_config(config_path)
    opened = {**load_stages(config).models, **(open_liveness(config) or pytest.fail("PAD off")).models}
    _, lines = doctor(config_path, capsys)
    after = cpu_files_line(lines)
    assert "not timed yet" not in after
    for model in opened.values():
        health = model.health()
        reason = health["cpu_variant_reason"].removeprefix("kept from first start: ")
        assert f"{health['model']} {health['cpu_variant']} ({reason})" in after


def test_a_tampered_presentation_attack_model_fails_the_models_check(
    tmp_path: Path, mosquitto_broker: Any, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """PAD's models are checked like the detector's: a swapped MiniFASNet file is named, not trusted."""
    from device.commands.init import shipped_models_dir

    shipped = shipped_models_dir()
    assert shipped is not None
    models = tmp_path / "models"
    shutil.copytree(shipped, models)
    texture = models / "minifasnet" / "minifasnet_v2_float.tflite"
    damaged = bytearray(texture.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    texture.write_bytes(bytes(damaged))
    config = write_unit(tmp_path, mosquitto_broker, face_images, models={"dir": str(models)})
    code, lines = doctor(config, capsys)
    assert code == 1
    failed = failed_lines(lines)
    assert len(failed) == 1 and failed[0].startswith("✗ models:") and "minifasnet_v2" in failed[0], failed
