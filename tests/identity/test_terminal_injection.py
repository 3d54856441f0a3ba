"""Issue 25 point 8: names, consent references and operators cannot steer a terminal or forge a row.

The attacker is whoever types into ``enroll``/``forget`` (or fills a provisioned set), aiming at the
operator who later runs ``subjects list``: an ESC sequence retitles or clears the terminal, ``\\n`` adds a
row to the table that looks like another subject, U+202E shows text backwards. Refused at input with one
line; text stored before the check existed is printed escaped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gallery_helpers import Unit, enrol_random, init_unit

from device.cli import main
from device.errors import EXIT_USAGE, UnsafeTextError, shown
from device.identity.gallery_store import EnrolRequest
from tests.identity.test_gallery_cli import random_templates

ROW_FORGERY = "Anna\ns-000000  Mallory  3  2099-01-01"
TERMINAL_TITLE = "Anna\x1b]0;owned\x07"
BACKWARDS = "Anna \u202egnp.exe"
HOSTILE = [ROW_FORGERY, TERMINAL_TITLE, BACKWARDS, "Anna\x9b2J"]


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return init_unit(tmp_path)


def enroll_args(unit: Unit, tmp_path: Path, **overrides: str) -> list[str]:
    fields = {"--name": "Anna", "--consent-ref": "FORM-1", "--operator": "installer"} | overrides
    picture = tmp_path / "never-read.jpg"  # does not exist: a refusal must come before any picture
    return ["--config", str(unit.config_path), "enroll", "--images", str(picture)] + [
        item for pair in fields.items() for item in pair
    ]


@pytest.mark.parametrize("option", ["--name", "--consent-ref", "--operator"])
@pytest.mark.parametrize("hostile", HOSTILE, ids=["newline", "escape", "bidi", "c1-csi"])
def test_enroll_refuses_control_characters_before_reading_anything(
    unit: Unit, tmp_path: Path, option: str, hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(enroll_args(unit, tmp_path, **{option: hostile})) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert "control characters" in err and option in err
    assert err.count("\n") == 1 and "\x1b" not in err and "\u202e" not in err  # one line, itself escaped
    assert out == ""  # no picture was judged
    assert unit.store().subjects() == []


def test_forget_refuses_a_hostile_operator_or_reason_and_keeps_the_subject(
    unit: Unit, capsys: pytest.CaptureFixture[str]
) -> None:
    info, _ = enrol_random(unit.store(), "Kept", seed=1)
    base = ["--config", str(unit.config_path), "forget", info.subject_id, "--yes"]
    assert main([*base, "--operator", "dpo\n2026-01-01 forget by admin"]) == EXIT_USAGE
    assert main([*base, "--reason", "request\x1b[2J"]) == EXIT_USAGE
    assert "control characters" in capsys.readouterr().err
    assert [subject.subject_id for subject in unit.store().subjects()] == [info.subject_id]


def test_the_store_refuses_them_too_so_a_provisioned_set_cannot_carry_them(unit: Unit) -> None:
    store = unit.store()
    for name, consent, operator in [
        (TERMINAL_TITLE, "F-1", "ansible"),
        ("Anna", ROW_FORGERY, "ansible"),
        ("Anna", "F-1", BACKWARDS),
    ]:
        with pytest.raises(UnsafeTextError):
            store.enrol(EnrolRequest(name, random_templates(2, 3), consent, operator, "v1"))
    assert store.subjects() == []
    with pytest.raises(UnsafeTextError):
        store.audit.append("enrol_refused", "x\ny", {"reason": "r"})


def test_names_stored_before_the_check_are_printed_escaped_one_row_each(
    unit: Unit, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A gallery written by a unit from before the check: plant the hostile text past the input check.
    monkeypatch.setattr("device.identity.gallery_store.require_plain", lambda text, what: text)
    monkeypatch.setattr("device.identity.audit.require_plain", lambda text, what: text)
    planted = [
        enrol_random(unit.store(), hostile, seed=index, consent=f"F-{index}\x1b[8m")[0]
        for index, hostile in enumerate(HOSTILE)
    ]
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["--config", str(unit.config_path), "subjects", "list"]) == 0
    table = capsys.readouterr().out
    assert len(table.splitlines()) == 1 + len(planted)  # header + one row per subject, none forged
    assert not any(char in table for char in "\x1b\x07\x9b\u202e")
    assert "Anna\\x0as-000000" in table and "\\x1b]0;owned\\x07" in table and "\\u202e" in table
    assert "F-0\\x1b[8m" in table

    assert main(["--config", str(unit.config_path), "forget", planted[1].subject_id, "--yes"]) == 0
    said = capsys.readouterr().out
    assert "\x1b" not in said and shown(TERMINAL_TITLE) in said


def test_escaping_leaves_ordinary_names_alone() -> None:
    for name in ["Zoë Ĺukáš-O'Brien", "李小龙", "محمد\u200cرضا", "A. Resident (FORM-2026-0042)"]:
        assert shown(name) == name


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_enroll_prints_a_hostile_picture_name_escaped(
    unit: Unit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "visitor\x1b]0;owned\x07\nok   all.jpg"  # a file name is typed by someone too
    picture.write_bytes(b"not a picture")
    capsys.readouterr()
    main(["--config", str(unit.config_path), "enroll", "--name", "Anna", "--consent-ref", "F-1",
          "--images", str(picture)])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("skip ") and len(out.splitlines()) == 1, out
    assert "\x1b" not in out and "\\x1b]0;owned\\x07\\x0aok   all.jpg" in out
