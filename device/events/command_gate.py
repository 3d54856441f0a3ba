"""The unit's command gate: what a message on ``<prefix>/<unit>/cmd/<name>`` must pass before anything acts.

Four checks, in this order, each refusing with ``CommandRefusedError`` and its reason code (the publisher
counts it, logs it without letting a flood write the log, and answers it): the message parses as a command
signed for this unit and is in time (``payloads.parse_command``), its signature is a trusted commander's
(``signing.CommandVerifier``), the unit's clock is synchronised (``clock``: an expiry means nothing on a
clock that is behind), and its request id has not acted before. Only then does the command reach its
handler, looked up in a table the unit gives at construction; a name with no handler is refused, so a unit
acts only on the commands it was built to take. ``decide`` turns all of that into a ``Verdict``: what the
unit's answer says.

Used request ids are written to the state folder (``UsedRequests``) before the command acts, and kept
until the command has expired: a recording replayed after the unit restarts is refused too.

No MQTT here: the transport hands over topic, bytes and the retain flag, which keeps the gate testable on
its own and reviewable apart from the connection code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from device.atomicio import (
    ensure_private_directory,
    open_unit_file,
    read_unit_file,
    write_atomically,
)
from device.errors import shown
from device.events.clock import ClockProbe, always_synchronised
from device.events.payloads import (
    COMMAND_CLOCK_SKEW_S,
    Command,
    CommandRefusedError,
    PayloadError,
    Refusal,
    Topics,
    command_fields,
    parse_command,
)
from device.events.signing import CommandVerifier

log = logging.getLogger(__name__)

# Command request ids remembered so that each command acts once; a command lives at most 600 s, far
# fewer than this many arrive in that time.
REQUESTS_REMEMBERED = 4096
COMPACT_AFTER_LINES = 1024  # the record is rewritten with the live entries once it grows past this


class UsedRequests:
    """The request ids that have acted, each until its command expires (plus the clock skew allowed).

    With a ``path``, every id is appended and fsynced before its command acts, and read back at start,
    so a restart forgets nothing a replay could use. A torn last line (a power cut mid-write) is skipped:
    its command never acted, because acting comes after the write.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        remembered: int = REQUESTS_REMEMBERED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._remembered = remembered
        self._clock = clock
        self._used: OrderedDict[str, float] = OrderedDict()
        self._lines = 0
        if path is not None:
            self._load(path)

    def __contains__(self, request: str) -> bool:
        return request in self._used and self._used[request] > self._clock() - COMMAND_CLOCK_SKEW_S

    def mark(self, request: str, expires_at: float) -> None:
        self._forget_expired()
        self._used[request] = expires_at
        if len(self._used) > self._remembered:
            self._used.popitem(last=False)
        if self._path is not None:
            self._append({"request": request, "expires_at": expires_at})

    def _forget_expired(self) -> None:
        horizon = self._clock() - COMMAND_CLOCK_SKEW_S
        for request in [request for request, expires in self._used.items() if expires <= horizon]:
            del self._used[request]

    def _load(self, path: Path) -> None:
        try:
            text = read_unit_file(path).decode("utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as error:
            raise PayloadError(f"cannot read the used command record {path}: {error}") from None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self._used[str(entry["request"])] = float(entry["expires_at"])
            except (ValueError, KeyError, TypeError):
                continue
        self._lines = len(text.splitlines())
        self._forget_expired()

    def _append(self, entry: dict[str, object]) -> None:
        assert self._path is not None
        if self._lines >= COMPACT_AFTER_LINES:
            live = "".join(
                json.dumps({"request": r, "expires_at": e}, sort_keys=True) + "\n"
                for r, e in self._used.items()
            )
            write_atomically(self._path, live.encode("utf-8"))
            self._lines = len(self._used)
            return
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        ensure_private_directory(self._path.parent)
        fd = open_unit_file(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1


class RejectionLog:
    """Logs refused commands without letting whoever sends them write the unit's log.

    Any consumer certificate can publish on a unit's cmd topics: 20,000 junk commands must not become
    20,000 WARNING lines that bury everything else and fill the card. The first ``burst`` refusals of
    each ``interval_s`` are logged one line each (their text escaped: a commander name or request id
    carrying ``\\n`` or ESC cannot forge a line or steer a terminal); the rest are counted and said in one
    summary line when the interval is over (``tick``). Every refusal is counted in health regardless.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self._suppressed = 0
        self.unlogged = 0  # refusals never given their own line, since start

    def rejected(self, topic: str, size: int, reason: str) -> None:
        self.tick()
        if self._logged < self._burst:
            self._logged += 1
            self._log.warning("rejected command on %s (%d bytes): %s", shown(topic), size, shown(reason))
            return
        self._suppressed += 1
        self.unlogged += 1

    def tick(self) -> None:
        """Closes the interval once it is over: one summary line if refusals went unlogged in it."""
        now = self._clock()
        if now - self._window_start < self._interval_s:
            return
        if self._suppressed:
            self._log.warning(
                "%d more commands rejected in the last %.0f s without a line each (health: commands)",
                self._suppressed,
                now - self._window_start,
            )
        self._window_start, self._logged, self._suppressed = now, 0, 0


CommandHandler = Callable[[Command], None]
"""Acts on an admitted command; raises ``CommandRefusedError`` (or any ``PayloadError``: reason ``failed``) to
refuse it."""


class SubjectNotEnrolledError(ValueError):
    """A claim for a subject this unit does not know (``on_claim`` raises it)."""


@dataclass(frozen=True)
class Verdict:
    """What became of one command message: applied, or refused with a reason code and the detail logged.

    ``request_id`` and ``command`` are the message's own as far as it gives them (None when malformed
    beyond reading); ``subject_id`` only when the command was read and named one.
    """

    request_id: str | None
    command: str | None
    refusal: Refusal | None
    detail: str
    subject_id: str | None = None

    @property
    def applied(self) -> bool:
        return self.refusal is None


class CommandGate:
    """Parse, verify, use once, then dispatch through the handler table."""

    def __init__(
        self,
        topics: Topics,
        verifier: CommandVerifier,
        handlers: Mapping[str, CommandHandler],
        *,
        used: UsedRequests | None = None,
        clock_synchronised: ClockProbe = always_synchronised,
    ) -> None:
        self._clock_synchronised = clock_synchronised
        self._topics = topics
        self._verifier = verifier
        self._handlers = dict(handlers)
        self._used = used if used is not None else UsedRequests()

    @property
    def trusts_anyone(self) -> bool:
        return bool(self._verifier.commanders)

    def admit(self, topic: str, payload: bytes, *, retained: bool) -> Command:
        """The command, parsed, verified and marked used; ``CommandRefusedError`` for anything else."""
        if retained:
            raise CommandRefusedError(
                Refusal.RETAINED, "retained commands are not accepted (they would replay on every connect)"
            )
        try:
            command = parse_command(self._topics, topic, payload)
        except CommandRefusedError:
            raise
        except PayloadError as error:
            raise CommandRefusedError(Refusal.MALFORMED, str(error)) from None
        try:
            self._verifier.verify(command.payload)
        except PayloadError as error:
            raise CommandRefusedError(Refusal.UNTRUSTED, str(error)) from None
        if not self._clock_synchronised():
            # Checked after parsing: with the clock behind, an expired recording would look fresh.
            raise CommandRefusedError(
                Refusal.CLOCK_UNSYNCHRONISED,
                f"{command.name} refused: clock not synchronised (time-bound commands wait for NTP)",
            )
        self._use_once(command)
        return command

    def handle(self, topic: str, payload: bytes, *, retained: bool) -> Command:
        """Admits the command and runs its handler; ``CommandRefusedError`` when refused at any step."""
        command = self.admit(topic, payload, retained=retained)
        self._run(command)
        return command

    def decide(self, topic: str, payload: bytes, *, retained: bool) -> Verdict:
        """``handle``, as the verdict the unit answers with; never raises for what a sender can send."""
        try:
            command = self.admit(topic, payload, retained=retained)
        except CommandRefusedError as error:
            request_id, name = command_fields(payload)
            return Verdict(request_id, name, error.reason, str(error))
        try:
            self._run(command)
        except CommandRefusedError as error:
            return Verdict(command.request_id, command.name, error.reason, str(error), command.subject_id)
        return Verdict(command.request_id, command.name, None, "applied", command.subject_id)

    def _run(self, command: Command) -> None:
        handler = self._handlers.get(command.name)
        if handler is None:
            raise CommandRefusedError(Refusal.UNSUPPORTED, f"this unit does not take {command.name} commands")
        try:
            handler(command)
        except CommandRefusedError:
            raise
        except PayloadError as error:
            raise CommandRefusedError(Refusal.FAILED, str(error)) from None

    def _use_once(self, command: Command) -> None:
        """A signed command replayed by whoever recorded it is refused: each request id acts once."""
        request = f"{command.commander}/{command.request_id}"
        if request in self._used:
            raise CommandRefusedError(
                Refusal.REPLAYED,
                f"{command.name} {command.request_id!r} from {command.commander!r} was already used",
            )
        self._used.mark(request, command.expires_at)


def claim_handler(on_claim: Callable[[str], None]) -> CommandHandler:
    """``claim``: the next decision window checks this subject only; a refusal (``ValueError``) is said,
    ``SubjectNotEnrolledError`` as its own reason."""

    def handle(command: Command) -> None:
        if command.subject_id is None:
            raise CommandRefusedError(Refusal.MALFORMED, "a claim names no subject")
        try:
            on_claim(command.subject_id)
        except SubjectNotEnrolledError as error:
            raise CommandRefusedError(Refusal.NOT_ENROLLED, f"claim refused: {error}") from error
        except ValueError as error:
            raise CommandRefusedError(Refusal.FAILED, f"claim refused: {error}") from error
        log.info("claim from %s received for subject %s", command.commander, command.subject_id)

    return handle


def reload_handler(on_reload: Callable[[], None]) -> CommandHandler:
    """``reload``: the enrolled set is read again from its file."""

    def handle(command: Command) -> None:
        on_reload()
        log.info("reload requested over MQTT by %s", command.commander)

    return handle


def command_table(
    *,
    on_claim: Callable[[str], None] | None = None,
    on_reload: Callable[[], None] | None = None,
) -> dict[str, CommandHandler]:
    """The handlers for the pipeline's commands, for those the caller can serve (``health`` is the
    publisher's own)."""
    table: dict[str, CommandHandler] = {}
    if on_claim is not None:
        table["claim"] = claim_handler(on_claim)
    if on_reload is not None:
        table["reload"] = reload_handler(on_reload)
    return table
