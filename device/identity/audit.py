"""Append-only, hash-chained audit log of enrol, forget, purge, config and key events.

One JSON object per line. Each entry carries the MAC of the entry before it (``prev``) and its own
``mac`` = HMAC-SHA256(audit key, canonical JSON of every other field). The audit key is derived from the
unit master key, so someone who edits the file cannot recompute the chain: editing an entry breaks its
own MAC (verify names it), deleting one breaks the sequence and the next entry's ``prev``, and cutting
entries off the end is caught against two anchors (seq and MAC of the latest entry): the one the gallery
file records under its own encryption, and ``secrets/audit.head`` (beside the master key, outside the
state folder), rewritten (MACed, atomically) after every append, so a cut tail or an older log put back
fails ``audit verify`` even when no gallery write came after the lost entries. (Putting back an old log
*and* its old head file together needs a hardware
monotonic counter to detect; see the README's threat model.)

No biometrics and no names ever go in: detail keys come from a fixed allow-list and values are short
scalars, so a template, an image or a display name cannot be logged by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device.atomicio import (
    PRIVATE_FILE_MODE,
    exclusive_lock,
    fsync_directory,
    open_unit_file,
    read_unit_file,
    write_atomically,
)
from device.errors import UserError, require_plain
from device.identity.masterkey import MasterKey
from device.layout import StateLayout

GENESIS_MAC = "0" * 64
AUDIT_KEY_PURPOSE = "entrance-camera audit chain v1"
MAX_DETAIL_CHARS = 200

EVENTS = frozenset(
    {
        "init",
        "key_generated",
        "enrol",
        "enrol_refused",
        "forget",
        "purge",
        "config",
        "gallery_unreadable",
        "backup",
        "restore",
        "outbox_drop",
    }
)
DETAIL_KEYS = frozenset(
    {
        "subject_id",
        "consent_ref",
        "purpose_version",
        "expires",
        "templates",
        "images_used",
        "images_rejected",
        "forced",
        "reason",
        "key_id",
        "config_digest",
        "gallery_generation",
        "count",
        "unit",
        "backup_id",
    }
)

Scalar = str | int | float | bool | None


class AuditError(UserError):
    """The audit log cannot be read or an entry is not allowed."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    event: str
    actor: str
    details: Mapping[str, Scalar]
    prev: str
    mac: str

    def as_json(self) -> str:
        return json.dumps(_entry_fields(self) | {"mac": self.mac}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class AuditAnchor:
    """The latest entry as a gallery file remembers it, to detect entries cut off the end of the log."""

    seq: int
    mac: str


@dataclass
class VerifyResult:
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    head: AuditAnchor | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _entry_fields(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "ts": entry.ts,
        "event": entry.event,
        "actor": entry.actor,
        "details": dict(entry.details),
        "prev": entry.prev,
    }


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_details(details: Mapping[str, Scalar]) -> None:
    for key, value in details.items():
        if key not in DETAIL_KEYS:
            raise AuditError(f"audit detail {key!r} is not on the allow-list")
        if not isinstance(value, str | int | float | bool | type(None)):
            raise AuditError(f"audit detail {key!r} must be a scalar, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            raise AuditError(f"audit detail {key!r} is longer than {MAX_DETAIL_CHARS} characters")
        if isinstance(value, str):
            require_plain(value, f"audit detail {key!r}")


def utc_now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, path: Path, master_key: MasterKey, *, head_path: Path | None = None) -> None:
        self.path = path
        self._head_path = head_path or path.with_name(path.name + ".head")
        self._key = master_key.derive(AUDIT_KEY_PURPOSE)

    @classmethod
    def of_unit(cls, layout: StateLayout, master_key: MasterKey) -> AuditLog:
        """The unit's log, its head beside the master key (a state folder put back cannot bring it)."""
        return cls(layout.audit_log, master_key, head_path=layout.audit_head)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def head_path(self) -> Path:
        return self._head_path

    def _write_head(self, entry: AuditEntry) -> None:
        fields = {"seq": entry.seq, "mac": entry.mac}
        record = fields | {"head_mac": self._mac({"head": fields})}
        write_atomically(self.head_path, json.dumps(record, sort_keys=True).encode())

    def recorded_head(self) -> AuditAnchor | None:
        """The head written after the last append; None when there is none (a log from before heads)."""
        try:
            record = json.loads(read_unit_file(self.head_path))
            seq, mac = int(record["seq"]), str(record["mac"])
            if not hmac.compare_digest(
                self._mac({"head": {"seq": seq, "mac": mac}}), str(record["head_mac"])
            ):
                raise AuditError(f"audit head {self.head_path} failed its MAC check: it was altered")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AuditError(f"audit head {self.head_path} is unreadable ({error})") from None
        return AuditAnchor(seq, mac)

    def _mac(self, fields: Mapping[str, Any]) -> str:
        return hmac.new(self._key, _canonical(fields), hashlib.sha256).hexdigest()

    def head_problem(self) -> str | None:
        """Why the log's last entry is not the one its head record names (a cut, deleted or older log
        put back), or None when they agree. A head with no log, or a log with no head, disagree too."""
        recorded = self.recorded_head()
        last = self._last_entry()
        if recorded is None:
            if last is None:
                return None  # a new log: nothing appended yet
            return f"the head record {self.head_path.name} is missing: a cut tail cannot be ruled out"
        if last is None:
            return f"the log is missing or empty but its head names entry seq {recorded.seq}: it was deleted"
        if (last.seq, last.mac) != (recorded.seq, recorded.mac):
            return (
                f"the log ends at entry seq {last.seq} but its head names seq {recorded.seq}: entries were "
                "removed from the end, or another log was put back"
            )
        return None

    def append(self, event: str, actor: str, details: Mapping[str, Scalar] | None = None) -> AuditEntry:
        """Add one entry at the end of the chain; durable (fsynced) when this returns.

        Refused when the log and its head disagree: extending a cut or replaced log would make it whole
        again in the eyes of ``audit verify``, so the change is refused and nothing is written."""
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        details = dict(details or {})
        _check_details(details)
        require_plain(actor, "the operator")
        with exclusive_lock(self.lock_path):
            problem = self.head_problem()
            if problem is not None:
                raise AuditError(f"audit log {self.path} refused: {problem}; nothing was changed")
            head = self._last_entry()
            seq = 1 if head is None else head.seq + 1
            prev = GENESIS_MAC if head is None else head.mac
            unsigned = AuditEntry(seq, utc_now_text(), event, actor[:MAX_DETAIL_CHARS], details, prev, "")
            entry = AuditEntry(**(_entry_fields(unsigned) | {"mac": self._mac(_entry_fields(unsigned))}))
            self._append_line(entry.as_json())
            self._write_head(entry)
        return entry

    def _append_line(self, line: str) -> None:
        existed = self.path.exists()
        fd = open_unit_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            fsync_directory(self.path.parent)

    def _last_entry(self) -> AuditEntry | None:
        last: AuditEntry | None = None
        for _, raw in self._lines():
            last = _parse(raw)
        return last

    def _lines(self) -> list[tuple[int, str]]:
        try:
            text = read_unit_file(self.path).decode("utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            raise AuditError(f"cannot read audit log {self.path}: {error}") from None
        return [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]

    def raw_lines(self) -> list[str]:
        return [line for _, line in self._lines()]

    def entries(self) -> list[AuditEntry]:
        """Every entry that parses (verify() reports the ones that do not)."""
        parsed = []
        for _, raw in self._lines():
            try:
                parsed.append(_parse(raw))
            except AuditError:
                continue
        return parsed

    def verify(self, anchor: AuditAnchor | None = None) -> VerifyResult:
        """Check every entry's MAC and its link to the one before; name each entry that fails."""
        result = VerifyResult()
        expected_prev: str | None = GENESIS_MAC
        expected_seq = 1
        for line_number, raw in self._lines():
            result.entries += 1
            where = f"line {line_number}"
            try:
                entry = _parse(raw)
            except AuditError as error:
                result.problems.append(f"entry at {where}: {error}")
                expected_prev, expected_seq = None, expected_seq + 1
                continue
            label = f"entry seq {entry.seq} ({where}, event {entry.event!r}, {entry.ts})"
            if self._mac(_entry_fields(entry)) != entry.mac:
                result.problems.append(f"{label}: MAC mismatch, the entry was altered")
            if entry.seq != expected_seq:
                result.problems.append(
                    f"{label}: expected seq {expected_seq}; entries are missing or out of order"
                )
            elif expected_prev is not None and entry.prev != expected_prev:
                result.problems.append(f"{label}: does not chain to the entry before it")
            expected_prev, expected_seq = entry.mac, entry.seq + 1
            result.head = AuditAnchor(entry.seq, entry.mac)
        if anchor is not None:
            result.problems.extend(_anchor_problems(self, anchor, "the gallery"))
        try:
            head = self.recorded_head()
        except AuditError as error:
            result.problems.append(str(error))
        else:
            if head is not None:
                result.problems.extend(
                    _anchor_problems(self, head, f"the head record ({self.head_path.name})")
                )
            elif result.entries:
                result.problems.append(
                    f"the head record {self.head_path.name} is missing: a cut tail cannot be ruled out"
                )
        return result

    def last_change_to_the_gallery(self) -> AuditEntry | None:
        """The last entry that changed the enrolled set (it names the gallery generation it made)."""
        return next((e for e in reversed(self.entries()) if "gallery_generation" in e.details), None)

    def entry_at(self, seq: int) -> AuditEntry | None:
        return next((entry for entry in self.entries() if entry.seq == seq), None)


def _anchor_problems(log: AuditLog, anchor: AuditAnchor, recorder: str) -> list[str]:
    entry = log.entry_at(anchor.seq)
    if entry is None:
        return [
            f"{recorder} records audit entry seq {anchor.seq}, which is not in the log: "
            "entries were removed from the end (or an older log was put back)"
        ]
    if entry.mac != anchor.mac:
        return [f"entry seq {anchor.seq} differs from the one {recorder} recorded: the log was rewritten"]
    return []


def _parse(raw: str) -> AuditEntry:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise AuditError(f"not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise AuditError("not a JSON object")
    try:
        entry = AuditEntry(
            seq=int(data["seq"]),
            ts=str(data["ts"]),
            event=str(data["event"]),
            actor=str(data["actor"]),
            details=dict(data["details"]),
            prev=str(data["prev"]),
            mac=str(data["mac"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise AuditError(f"missing or malformed field ({error})") from None
    return entry


def record_config_change(log: AuditLog, config_digest: str, actor: str) -> AuditEntry | None:
    """Appends a ``config`` entry when the effective config differs from the last one recorded.

    Called before each change of the enrolled set, so the log shows under which settings (expiry
    default, template count, threshold, consent purpose version) every enrolment, forget and purge ran.
    """
    last = next((entry for entry in reversed(log.entries()) if entry.event == "config"), None)
    if last is not None and last.details.get("config_digest") == config_digest:
        return None
    return log.append("config", actor, {"config_digest": config_digest})
