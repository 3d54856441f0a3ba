"""Hypothesis fuzz targets for every parser of files an attacker can hand the unit (issues 14, 25).

The property is the same for all: whatever bytes are in the file, the parser returns a value or raises
its own error type with a message; nothing else escapes (no RecursionError, KeyError, UnicodeError...).
A short run is part of ``make test``; ``make fuzz`` sets ``FUZZ_EXAMPLES`` high.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.atomicio import InputFileError, read_capped
from device.config import ConfigError, load_config, parse_config
from device.consumers.door import DoorAudit, DoorPolicy
from device.errors import UnsafeTextError, require_plain, shown, unsafe_characters
from device.events.payloads import PayloadError
from device.events.signing import COMMANDERS, UNITS, CommandVerifier, load_registry, registry_text
from device.identity.audit import AuditError, AuditLog
from device.identity.backup import BackupError, open_backup
from device.identity.gallery_file import GallerySealer
from device.identity.gallery_records import GalleryUnreadableError
from device.identity.keyring import KeyringError, fresh_keyring, open_keyring, seal_keyring
from device.identity.masterkey import MasterKey
from device.identity.sealed import SealedError, parse_enrolled_set, read_header
from device.vision.picture_header import picture_dimensions

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
MASTER = MasterKey(bytes(range(32)))
GALLERY_KEY = bytes(range(32, 64))


def real_gallery_file() -> bytes:
    from device.identity.gallery_records import GalleryContents

    return GallerySealer(GALLERY_KEY).seal_file(GalleryContents(generation=3))


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and the real file with bytes flipped, cut or spliced: close to what parses."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "cut", "insert"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            else:
                data[at:at] = draw(st.binary(max_size=64))
        return bytes(data)

    return st.one_of(st.binary(max_size=4096), mutate())


@FUZZ
@given(data=mutations(real_gallery_file()))
def test_the_gallery_file_parser_only_raises_its_own_error(data: bytes) -> None:
    with contextlib.suppress(GalleryUnreadableError):
        GallerySealer(GALLERY_KEY).open_file(data, "fuzz")


@FUZZ
@given(data=mutations(seal_keyring(fresh_keyring(), MASTER)))
def test_the_keyring_parser_only_raises_its_own_error(data: bytes) -> None:
    with contextlib.suppress(KeyringError):
        open_keyring(data, MASTER, "fuzz")


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), st.text(max_size=2048).map(str.encode)))
def test_the_backup_parser_only_raises_its_own_error(data: bytes) -> None:
    with contextlib.suppress(BackupError):
        open_backup(data, fresh_keyring(), MASTER)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=4096),
        JSONISH.map(lambda value: __import__("json").dumps(value).encode()),
        st.integers(1, 100_000).map(lambda depth: b'{"header": ' + b"[" * depth + b"]" * depth + b"}"),
    )
)
def test_the_sealed_set_parsers_only_raise_their_own_error(data: bytes) -> None:
    for parse in (read_header, parse_enrolled_set):
        with contextlib.suppress(SealedError):
            parse(data, "fuzz")


@FUZZ
@given(lines=st.lists(st.text(max_size=300), max_size=8), head=st.binary(max_size=300))
def test_audit_verify_reports_problems_instead_of_raising(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], head: bytes
) -> None:
    folder = tmp_path_factory.mktemp("audit")
    log_path = folder / "audit.jsonl"
    log_path.write_text(
        "\n".join(line.replace("\r", "") for line in lines), encoding="utf-8", errors="replace"
    )
    (folder / "audit.head").write_bytes(head)
    log = AuditLog(log_path, MASTER, head_path=folder / "audit.head")
    try:
        log.verify()
    except AuditError as error:
        assert "cannot read" in str(error)  # only an unreadable file may stop verification


@FUZZ
@given(
    text=st.one_of(st.text(max_size=2048), st.integers(1, 50_000).map(lambda d: "a = " + "[" * d + "]" * d))
)
def test_the_config_loader_only_raises_config_errors(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path: Path = tmp_path_factory.mktemp("config") / "unit.toml"
    path.write_text(text, encoding="utf-8", errors="replace")
    with contextlib.suppress(ConfigError):
        load_config(path)


@FUZZ
@given(
    data=st.dictionaries(st.sampled_from(["unit", "capture", "matching", "gallery", "mqtt", "x"]), JSONISH)
)
@pytest.mark.slow
def test_parsed_config_tables_only_raise_config_errors(data: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(data, "fuzz")


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), st.binary(max_size=64).map(lambda b: b"\xff\xd8" + b)))
def test_the_picture_header_reader_never_raises(data: bytes) -> None:
    result = picture_dimensions(data)
    assert result is None or all(isinstance(side, int) and side >= 0 for side in result)


def json_file_contents() -> st.SearchStrategy[bytes]:
    """Random bytes, JSON of every shape, and JSON nested up to 100,000 deep (issue 25, point 7)."""
    return st.one_of(
        st.binary(max_size=4096),
        JSONISH.map(lambda value: __import__("json").dumps(value).encode()),
        JSONISH.map(lambda value: __import__("json").dumps({"units": value, "commanders": value}).encode()),
        st.integers(1, 100_000).map(lambda depth: b'{"units": ' + b"[" * depth + b"]" * depth + b"}"),
    )


@FUZZ
@given(data=json_file_contents())
def test_the_key_registry_loader_only_raises_its_own_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    """``--keys`` and ``mqtt.command_keys``: a PayloadError or an InputFileError (exit 2), nothing else."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_bytes(data)
    for section in (UNITS, COMMANDERS):
        with contextlib.suppress(PayloadError, InputFileError):
            load_registry(path, section)


@FUZZ
@given(data=json_file_contents())
def test_the_door_policy_loader_only_raises_value_errors_or_input_file_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    """``door --policy``: the door command turns a ValueError (pydantic's too) into one line and exit 2."""
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_bytes(data)
    with contextlib.suppress(ValueError, InputFileError):
        DoorPolicy.load(path)


@FUZZ
@given(data=st.binary(max_size=2048), cap=st.integers(0, 2048))
def test_the_capped_reader_returns_the_file_or_refuses_it_by_size(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cap: int
) -> None:
    path = tmp_path_factory.mktemp("capped") / "file"
    path.write_bytes(data)
    try:
        assert read_capped(path, cap, "fuzz") == data and len(data) <= cap
    except InputFileError:
        assert len(data) > cap


def test_the_defaults_file_parses_as_the_fuzzed_loader_expects() -> None:
    """Guards the fuzz target itself: the loader does accept a real config."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "firmware_config" / "unit.defaults.toml").read_text()
    assert tomllib.loads(text)
    tmp = repo / "firmware_config" / "unit.defaults.toml"
    assert load_config(tmp).unit.id


# --- issue 25: typed text, the trusted commanders file, the door's seq record ------------------------------
@FUZZ
@given(text=st.text(max_size=200))
def test_typed_text_is_refused_exactly_when_unsafe_and_always_shown_on_one_line(text: str) -> None:
    unsafe = unsafe_characters(text)
    try:
        require_plain(text, "fuzz")
    except UnsafeTextError:
        assert unsafe
    else:
        assert not unsafe
    escaped = shown(text)
    assert unsafe_characters(escaped) == [] and len(escaped.splitlines()) <= 1
    assert escaped == text or unsafe


@FUZZ
@given(
    data=st.one_of(
        mutations(registry_text({"door-1": "A" * 43, "keypad": "B" * 43}, COMMANDERS).encode()),
        st.integers(1, 100_000).map(lambda depth: b'{"commanders": ' + b"[" * depth + b"]" * depth + b"}"),
    )
)
def test_the_trusted_commanders_file_parser_only_raises_its_own_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("trust") / "commanders.json"
    path.write_bytes(data)
    with contextlib.suppress(PayloadError, InputFileError):  # InputFileError: nested too deep, exit 2
        CommandVerifier.from_config(path)


@FUZZ
@given(
    data=st.one_of(
        mutations(b'{"action": "open", "event_id": "e", "seq": 7, "unit": "lobby-1"}\n' * 3),
        st.integers(1, 100_000).map(lambda depth: b"[" * depth + b"]" * depth + b"\n"),
    )
)
def test_the_doors_seq_record_reader_never_raises(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    audit = DoorAudit(tmp_path_factory.mktemp("door") / "door-audit.jsonl")
    audit.path.write_bytes(data)
    assert all(isinstance(seq, int) for seq in audit.last_seqs().values())
