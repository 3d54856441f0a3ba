"""Enrolled sets travel sealed for one unit: only that unit opens them, and any change is refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from device.cli import main
from device.config import load_config
from device.identity.gallery_store import GalleryStore


def _signer(tmp_path: Path) -> Path:
    """The fleet controller's enrolment-signing key (made once per test)."""
    key = tmp_path / "controller" / "enrolment-signer.key"
    if not key.exists():
        key.parent.mkdir(exist_ok=True)
        assert main(["provision", "signer-keygen", "--out", str(key)]) == 0
    return key


def _unit(tmp_path: Path, unit_id: str) -> Path:
    unit_dir = tmp_path / unit_id
    assert main(["init", "--dir", str(unit_dir), "--unit-id", unit_id, "--operator", "installer"]) == 0
    config = unit_dir / "unit.toml"
    assert main(["--config", str(config), "provision", "keygen"]) == 0
    pub = _signer(tmp_path).with_suffix(".pub")
    assert main(["--config", str(config), "provision", "trust-signer", str(pub)]) == 0
    return config


def _enrolled_set(path: Path, subjects: int = 2, dim: int = 128) -> Path:
    rng = np.random.default_rng(3)
    document = {
        "schema": 1,
        "subjects": [
            {
                "name": f"Resident {n}",
                "templates": rng.normal(size=(2, dim)).tolist(),
                "consent_reference": f"form-2026-{n:03d}",
                "purpose_version": "v1",
                "operator": "front-desk",
                "expires": "2027-06-30",
            }
            for n in range(subjects)
        ],
    }
    path.write_text(json.dumps(document))
    return path


def _seal(tmp_path: Path, config: Path, unit_id: str, name: str = "set.sealed") -> Path:
    source = _enrolled_set(tmp_path / "set.json")
    out = tmp_path / name
    public = config.parent / "secrets" / "provision.pub"
    assert main(["provision", "seal", "--recipient", str(public), "--unit", unit_id, "--in", str(source),
                 "--out", str(out), "--signing-key", str(_signer(tmp_path))]) == 0  # fmt: skip
    return out


def test_keygen_makes_a_private_key_only_the_unit_reads(tmp_path: Path) -> None:
    config = _unit(tmp_path, "lobby-1")
    key = config.parent / "secrets" / "provision.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (config.parent / "secrets" / "provision.pub").read_text().count("ecpub1:") == 1
    assert main(["--config", str(config), "provision", "keygen"]) == 1  # never overwritten


def test_the_unit_it_was_sealed_for_opens_it_and_prints_no_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _unit(tmp_path, "lobby-1")
    sealed = _seal(tmp_path, config, "lobby-1")
    assert "Resident" not in sealed.read_text()
    capsys.readouterr()
    assert main(["--config", str(config), "provision", "check", "--in", str(sealed)]) == 0
    out = capsys.readouterr().out
    assert "2 subjects, 4 templates, expiries 2027-06-30..2027-06-30" in out
    assert "Resident" not in out


def test_another_unit_cannot_open_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lobby = _unit(tmp_path, "lobby-1")
    garage = _unit(tmp_path, "garage-1")
    sealed = _seal(tmp_path, lobby, "lobby-1")
    assert main(["--config", str(garage), "provision", "check", "--in", str(sealed)]) == 1
    assert "sealed for unit 'lobby-1', this is 'garage-1'" in capsys.readouterr().err


def test_relabelling_or_changing_a_byte_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lobby = _unit(tmp_path, "lobby-1")
    garage = _unit(tmp_path, "garage-1")
    # Sealed for the garage's key but labelled lobby-1, then relabelled: the header is authenticated.
    sealed = tmp_path / "relabelled.sealed"
    public = garage.parent / "secrets" / "provision.pub"
    source = _enrolled_set(tmp_path / "set.json")
    assert main(["provision", "seal", "--recipient", str(public), "--unit", "lobby-1", "--in", str(source),
                 "--out", str(sealed), "--signing-key", str(_signer(tmp_path))]) == 0  # fmt: skip
    document = json.loads(sealed.read_text())
    document["header"]["unit"] = "garage-1"
    sealed.write_text(json.dumps(document))
    assert main(["--config", str(garage), "provision", "check", "--in", str(sealed)]) == 1
    assert "not signed by the pinned fleet enrolment key" in capsys.readouterr().err

    good = _seal(tmp_path, lobby, "lobby-1", "good.sealed")
    document = json.loads(good.read_text())
    ciphertext = bytearray(base64.b64decode(document["ciphertext"]))
    ciphertext[10] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
    good.write_text(json.dumps(document))
    assert main(["--config", str(lobby), "provision", "check", "--in", str(good)]) == 1
    assert "not signed by the pinned fleet enrolment key" in capsys.readouterr().err


def test_an_invalid_set_is_refused_before_sealing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _unit(tmp_path, "lobby-1")
    source = _enrolled_set(tmp_path / "short.json", dim=127)
    public = config.parent / "secrets" / "provision.pub"
    out = tmp_path / "x.sealed"
    assert main(["provision", "seal", "--recipient", str(public), "--unit", "lobby-1", "--in", str(source),
                 "--out", str(out), "--signing-key", str(_signer(tmp_path))]) == 1  # fmt: skip
    assert "not a valid enrolled set" in capsys.readouterr().err
    assert not out.exists()


def test_import_enrols_each_subject_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _unit(tmp_path, "lobby-1")
    sealed = _seal(tmp_path, config, "lobby-1")
    command = ["--config", str(config), "provision", "import", "--in", str(sealed), "--operator", "ansible"]
    assert main(command) == 0
    assert main(command) == 0
    assert "already imported" in capsys.readouterr().out
    subjects = GalleryStore.from_config(load_config(config)).subjects()
    assert len(subjects) == 2
    assert {s.consent.reference for s in subjects} == {"form-2026-000", "form-2026-001"}
    assert all(s.expires.isoformat() == "2027-06-30" for s in subjects)


def test_a_set_sealed_by_anyone_holding_provision_pub_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14, finding 5: provision.pub is public, so sealing alone proves nothing about who made a set."""
    from device.identity.sealed import (
        generate_signer_key,
        load_public_key,
        load_signer_private,
        parse_enrolled_set,
        seal,
    )

    config = _unit(tmp_path, "lobby-1")
    recipient = load_public_key(config.parent / "secrets" / "provision.pub")
    enrolled = parse_enrolled_set(_enrolled_set(tmp_path / "set.json").read_bytes(), "set.json")
    attacker_key = tmp_path / "attacker.key"
    generate_signer_key(attacker_key)
    forged = tmp_path / "forged.sealed"
    forged.write_bytes(seal(enrolled, recipient, "lobby-1", load_signer_private(attacker_key)))
    assert main(["--config", str(config), "provision", "import", "--in", str(forged)]) == 1
    assert "not signed by the pinned fleet enrolment key" in capsys.readouterr().err

    unsigned = json.loads(forged.read_text())
    del unsigned["signature"]
    forged.write_text(json.dumps(unsigned))
    assert main(["--config", str(config), "provision", "import", "--in", str(forged)]) == 1
    assert "is not signed" in capsys.readouterr().err
    assert GalleryStore.from_config(load_config(config)).subjects() == []


def test_a_unit_without_a_pinned_signer_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _unit(tmp_path, "lobby-1")
    sealed = _seal(tmp_path, config, "lobby-1")
    (config.parent / "secrets" / "enrolment-signer.pub").unlink()
    assert main(["--config", str(config), "provision", "import", "--in", str(sealed)]) == 1
    assert "no fleet enrolment signer is pinned" in capsys.readouterr().err


def test_a_pinned_signer_is_not_replaced_by_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device.identity.sealed import generate_signer_key

    config = _unit(tmp_path, "lobby-1")
    other = tmp_path / "other.key"
    generate_signer_key(other)
    assert main(["--config", str(config), "provision", "trust-signer", str(other.with_suffix(".pub"))]) == 1
    assert "already pins another" in capsys.readouterr().err


def test_a_bundle_id_that_climbs_out_of_the_markers_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundle id names a marker file; a signed set with '../..' in it must never become a path."""
    import device.identity.sealed as sealed_module

    config = _unit(tmp_path, "lobby-1")
    real_token_hex = sealed_module.secrets.token_hex
    sealed_module.secrets.token_hex = lambda n: "../../../../tmp/x"  # type: ignore[assignment]
    try:
        sealed = _seal(tmp_path, config, "lobby-1", "traversal.sealed")
    finally:
        sealed_module.secrets.token_hex = real_token_hex  # type: ignore[assignment]
    assert main(["--config", str(config), "provision", "import", "--in", str(sealed)]) == 1
    assert "is not 16 hex digits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
