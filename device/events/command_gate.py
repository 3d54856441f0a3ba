"""The unit's command gate: what a message on ``<prefix>/<unit>/cmd/<name>`` must pass before anything acts.

Three checks, in this order, each refusing with ``PayloadError`` (the publisher counts and logs it):
the message parses as a command for this unit and is in time (``payloads.parse_command``), its signature
is a trusted commander's (``signing.CommandVerifier``), and its request id has not acted before. Only
then does the command reach its handler, looked up in a table the unit gives at construction; a name
with no handler is refused, so a unit acts only on the commands it was built to take.

No MQTT here: the transport hands over topic, bytes and the retain flag, which keeps the gate testable on
its own and reviewable apart from the connection code.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

from device.events.payloads import Command, PayloadError, Topics, parse_command
from device.events.signing import CommandVerifier

log = logging.getLogger(__name__)

# Command request ids remembered so that each command acts once; a command lives at most 600 s, far
# fewer than this many arrive in that time.
REQUESTS_REMEMBERED = 4096

CommandHandler = Callable[[Command], None]
"""Acts on an admitted command; raises ``PayloadError`` to refuse it (the reason is logged)."""


class CommandGate:
    """Parse, verify, use once, then dispatch through the handler table."""

    def __init__(
        self,
        topics: Topics,
        verifier: CommandVerifier,
        handlers: Mapping[str, CommandHandler],
        *,
        remembered: int = REQUESTS_REMEMBERED,
    ) -> None:
        self._topics = topics
        self._verifier = verifier
        self._handlers = dict(handlers)
        self._remembered = remembered
        self._requests_used: OrderedDict[str, None] = OrderedDict()

    @property
    def trusts_anyone(self) -> bool:
        return bool(self._verifier.commanders)

    def admit(self, topic: str, payload: bytes, *, retained: bool) -> Command:
        """The command, parsed, verified and marked used; ``PayloadError`` for anything else."""
        if retained:
            raise PayloadError("retained commands are not accepted (they would replay on every connect)")
        command = parse_command(self._topics, topic, payload)
        self._verifier.verify(command.payload)
        self._use_once(command)
        return command

    def handle(self, topic: str, payload: bytes, *, retained: bool) -> Command:
        """Admits the command and runs its handler; ``PayloadError`` when refused at any step."""
        command = self.admit(topic, payload, retained=retained)
        handler = self._handlers.get(command.name)
        if handler is None:
            raise PayloadError(f"this unit does not take {command.name} commands")
        handler(command)
        return command

    def _use_once(self, command: Command) -> None:
        """A signed command replayed by whoever recorded it is refused: each request id acts once."""
        request = f"{command.commander}/{command.request_id}"
        if request in self._requests_used:
            raise PayloadError(
                f"{command.name} {command.request_id!r} from {command.commander!r} was already used"
            )
        self._requests_used[request] = None
        if len(self._requests_used) > self._remembered:
            self._requests_used.popitem(last=False)


def claim_handler(on_claim: Callable[[str], None]) -> CommandHandler:
    """``claim``: the next decision window checks this subject only; a refusal (``ValueError``) is said."""

    def handle(command: Command) -> None:
        if command.subject_id is None:
            raise PayloadError("a claim names no subject")
        try:
            on_claim(command.subject_id)
        except ValueError as error:
            raise PayloadError(f"claim refused: {error}") from error
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
