"""The audit log: hash-chained, names altered or missing entries, holds no biometrics or names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit, run_device

from device.cli import main
from device.identity.audit import AuditError, AuditLog
from device.identity.masterkey import load_master_key


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    unit = init_unit(tmp_path)
    store = unit.store()
    first, _ = enrol_random(store, "Audit Alice", seed=1)
    enrol_random(store, "Audit Bob", seed=2)
    store.forget(first.subject_id, "tester")
    return unit


def audit_path(unit: Unit) -> Path:
    return unit.config.unit.state_dir / "audit.jsonl"


def lines(unit: Unit) -> list[str]:
    return audit_path(unit).read_text().splitlines()


def write_lines(unit: Unit, new_lines: list[str]) -> None:
    audit_path(unit).write_text("".join(line + "\n" for line in new_lines))


def verify(unit: Unit) -> tuple[int, str, str]:
    result = run_device("--config", str(unit.config_path), "audit", "verify")
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def test_the_log_records_init_key_enrol_and_forget_and_verifies(unit: Unit) -> None:
    events = [json.loads(line)["event"] for line in lines(unit)]
    assert events == ["init", "key_generated", "config", "enrol", "enrol", "forget"]
    code, out, _ = verify(unit)
    assert code == 0
    assert "audit log ok: 6 entries" in out


def test_an_altered_entry_is_named(unit: Unit) -> None:
    entries = lines(unit)
    altered = json.loads(entries[3])
    altered["details"]["consent_ref"] = "FORGED"
    entries[3] = json.dumps(altered, sort_keys=True, separators=(",", ":"))
    write_lines(unit, entries)
    code, _, err = verify(unit)
    assert code == 1
    assert "entry seq 4 (line 4, event 'enrol'" in err
    assert "MAC mismatch" in err
    assert "seq 5" not in err and "seq 6" not in err  # only the altered entry is blamed


def test_an_altered_timestamp_or_actor_is_caught(unit: Unit) -> None:
    entries = lines(unit)
    entries[5] = entries[5].replace('"actor":"tester"', '"actor":"nobody"')
    write_lines(unit, entries)
    code, _, err = verify(unit)
    assert code == 1 and "entry seq 6" in err


def test_a_deleted_entry_is_named(unit: Unit) -> None:
    entries = lines(unit)
    del entries[3]
    write_lines(unit, entries)
    code, _, err = verify(unit)
    assert code == 1
    assert "entry seq 5 (line 4" in err
    assert "expected seq 4" in err


def test_entries_cut_off_the_end_are_detected_against_the_gallery(unit: Unit) -> None:
    write_lines(unit, lines(unit)[:-1])
    code, _, err = verify(unit)
    assert code == 1
    assert "removed from the end" in err


def test_a_rewritten_chain_without_the_key_does_not_verify(unit: Unit) -> None:
    entries = [json.loads(line) for line in lines(unit)]
    entries[4]["mac"] = "f" * 64
    entries[5]["prev"] = "f" * 64
    write_lines(unit, [json.dumps(entry, sort_keys=True, separators=(",", ":")) for entry in entries])
    code, _, err = verify(unit)
    assert code == 1
    assert "entry seq 5" in err


def test_a_garbled_line_is_named(unit: Unit) -> None:
    entries = lines(unit)
    entries[1] = entries[1][:20]
    write_lines(unit, entries)
    code, _, err = verify(unit)
    assert code == 1
    assert "line 2: not valid JSON" in err


def test_an_old_gallery_file_put_back_is_detected(unit: Unit) -> None:
    store = unit.store()
    before = unit.config.gallery.path.read_bytes()
    bob = store.subjects()[0]
    store.forget(bob.subject_id, "tester")
    unit.config.gallery.path.write_bytes(before)  # brings the forgotten subject back
    code, _, err = verify(unit)
    assert code == 1
    assert "older gallery" in err and "restored copy" in err


def test_no_names_or_templates_in_the_log(unit: Unit) -> None:
    text = audit_path(unit).read_text()
    assert "Alice" not in text and "Bob" not in text
    for entry in map(json.loads, text.splitlines()):
        for value in entry["details"].values():
            assert not isinstance(value, list | dict)
            assert not (isinstance(value, str) and len(value) > 200)


def test_the_log_refuses_details_outside_the_allow_list(unit: Unit) -> None:
    log = AuditLog(audit_path(unit), load_master_key(unit.config.gallery.master_key_path))
    for details in (
        {"name": "Alice"},
        {"template": "AAAA"},
        {"subject_id": [0.1, 0.2]},
        {"reason": "x" * 201},
    ):
        with pytest.raises(AuditError):
            log.append("enrol", "tester", details)  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="unknown audit event"):
        log.append("photo_taken", "tester", {})
    assert len(lines(unit)) == 6


def test_export_writes_every_entry_and_fails_when_the_log_does_not_verify(
    unit: Unit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export.jsonl"
    assert main(["--config", str(unit.config_path), "audit", "export", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == lines(unit)
    assert main(["--config", str(unit.config_path), "audit", "export"]) == 0
    assert capsys.readouterr().out.splitlines() == lines(unit)

    write_lines(unit, lines(unit)[:2] + lines(unit)[3:])
    assert main(["--config", str(unit.config_path), "audit", "export", "--out", str(out)]) == 1
    assert "FAILED verification" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 5


def test_a_changed_config_is_recorded_once_before_the_next_change(unit: Unit) -> None:
    with unit.config_path.open("a") as config:
        config.write("\n[matching]\nthreshold = 0.95\n")
    store = unit.store()
    enrol_random(store, "Audit Carol", seed=3)
    enrol_random(store, "Audit Dave", seed=4)
    entries = [json.loads(line) for line in lines(unit)]
    assert [entry["event"] for entry in entries[-4:]] == ["forget", "config", "enrol", "enrol"]
    digests = [entry["details"]["config_digest"] for entry in entries if entry["event"] == "config"]
    assert len(digests) == 2 and digests[0] != digests[1]
    assert verify(unit)[0] == 0


@pytest.mark.slow
def test_a_cut_tail_fails_verification_even_with_the_gallery_put_back_too(unit: Unit) -> None:
    """Finding 2 of issue 14: cut the log to 4 lines and restore the matching old gallery."""
    gallery = unit.config.gallery.path
    early_gallery = gallery.read_bytes()
    early_lines = lines(unit)[:4]
    enrol_random(unit.store(), "Later Person", seed=61)
    assert verify(unit)[0] == 0

    write_lines(unit, early_lines)
    gallery.write_bytes(early_gallery)
    code, _, err = verify(unit)
    assert code == 1
    assert "removed from the end" in err


def test_an_older_log_put_back_fails_verification(unit: Unit) -> None:
    older = lines(unit)
    enrol_random(unit.store(), "Someone", seed=62)
    unit.store().forget(unit.store().subjects()[0].subject_id, "tester")
    write_lines(unit, older)
    code, _, err = verify(unit)
    assert code == 1
    assert "head record" in err


@pytest.mark.slow
def test_an_edited_or_missing_head_record_fails_verification(unit: Unit) -> None:
    enrol_random(unit.store(), "Someone", seed=63)
    log = unit.store().audit
    record = json.loads(log.head_path.read_text())
    record["seq"] -= 1  # point the head at an earlier entry, to hide the last one
    log.head_path.write_text(json.dumps(record))
    code, _, err = verify(unit)
    assert code == 1 and "altered" in err

    log.head_path.unlink()
    code, _, err = verify(unit)
    assert code == 1 and "missing" in err
