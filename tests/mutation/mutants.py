"""The defences the suite must notice losing: each mutant switches one off, and names the behavioural
tests expected to fail without it (issue 30). ``make mutation-check`` applies them one at a time to a
copy of the tree (tests/mutation/run.py); ``test_mutants.py`` keeps every anchor in step with the code.

A mutant is a plain text edit: the ``anchor`` must occur exactly once in ``path`` and is replaced by
``replacement``. Pinned-number tests (the demo-clip outcome, the PAD holdout figures) are deliberately
not listed: a defence must be caught by a test of what it is for, not by a float moving.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    defence: str
    path: str
    anchor: str
    replacement: str
    tests: tuple[str, ...]

    def apply(self, source: str) -> str:
        count = source.count(self.anchor)
        if count != 1:
            raise ValueError(f"mutant {self.name}: anchor found {count} times in {self.path} (want 1)")
        return source.replace(self.anchor, self.replacement)


def without_cue(cue: str, tests: tuple[str, ...]) -> Mutant:
    """The fusion never hears from ``cue``: as if the cue were not built."""
    return Mutant(
        name=f"liveness_cue_{cue}",
        defence=f"the {cue} liveness cue",
        path="device/vision/liveness.py",
        anchor="def fuse(cues: dict[str, CueResult]) -> Liveness:\n",
        replacement=(
            "def fuse(cues: dict[str, CueResult]) -> Liveness:\n"
            f"    cues = {{name: cue for name, cue in cues.items() if name != {cue!r}}}  # MUTANT\n"
        ),
        tests=tests,
    )


LIVENESS_TESTS = (
    "tests/vision/test_each_cue_earns_its_place.py",
    "tests/vision/test_liveness.py",
    "tests/runtime/test_pad_pipeline.py",
)

MUTANTS: tuple[Mutant, ...] = (
    without_cue("texture", LIVENESS_TESTS),
    without_cue("frame_edges", LIVENESS_TESTS),
    without_cue("spectrum", LIVENESS_TESTS),
    without_cue("geometry", LIVENESS_TESTS),
    without_cue("infrared", LIVENESS_TESTS),
    Mutant(
        name="event_signature",
        defence="consumers check each event's signature against the unit's key",
        path="device/events/signing.py",
        anchor="        if not signed_by(key, signature, event):\n",
        replacement="        if False:  # MUTANT: signature not checked\n",
        tests=("tests/events/test_signed_events.py", "tests/consumers/test_door.py"),
    ),
    Mutant(
        name="command_signature",
        defence="the unit acts only on commands a trusted commander signed",
        path="device/events/signing.py",
        anchor="        if not signed_by(key, signature, payload):\n",
        replacement="        if False:  # MUTANT: signature not checked\n",
        tests=("tests/events/test_command_gate.py", "tests/events/test_signed_commands.py"),
    ),
    Mutant(
        name="answer_signature",
        defence="a commander takes only an answer the unit signed (issue 26)",
        path="device/events/signing.py",
        anchor="    if not signed_by(key, signature, answer):\n",
        replacement="    if False:  # MUTANT: answer signature not checked\n",
        tests=("tests/events/test_signed_commands.py",),
    ),
    Mutant(
        name="answer_topic",
        defence="a unit answers only on its own answer topics, whatever response topic a command names",
        path="device/events/mqtt_publisher.py",
        anchor="        if self._topics.answer_reader(str(response_topic)) is None:\n",
        replacement="        if False:  # MUTANT: answers go wherever the command says\n",
        tests=("tests/events/test_signed_commands.py",),
    ),
    Mutant(
        name="command_target_unit",
        defence="a command names the unit it is for, so a recording cannot be replayed on another unit",
        path="device/events/payloads.py",
        anchor='    if payload["unit"] != topics.unit:\n',
        replacement="    if False:  # MUTANT: any unit's command is taken\n",
        tests=("tests/events/test_command_gate.py",),
    ),
    Mutant(
        name="command_ids_persisted",
        defence="used command ids are read back at start, so a replay after a restart is refused",
        path="device/events/command_gate.py",
        anchor="        if path is not None:\n            self._load(path)\n",
        replacement="        pass  # MUTANT: the record is written but never read back\n",
        tests=("tests/events/test_command_gate.py",),
    ),
    Mutant(
        name="audit_head_on_append",
        defence="the audit log refuses to extend a chain its head does not end (a cut log stays cut)",
        path="device/identity/audit.py",
        anchor="            problem = self.head_problem()\n",
        replacement="            problem = None  # MUTANT: append extends whatever it finds\n",
        tests=("tests/identity/test_restored_with_its_keys.py",),
    ),
    Mutant(
        name="gallery_against_audit",
        defence="a gallery older than the audit log's last change is refused, keyring or not",
        path="device/identity/gallery_file.py",
        anchor="    if anchor is None or anchor.seq < last_change.seq:\n",
        replacement="    if False:  # MUTANT: the gallery is not checked against the audit log\n",
        tests=("tests/identity/test_restored_with_its_keys.py",),
    ),
    Mutant(
        name="keyring_generation",
        defence="a gallery file is opened only if the keyring vouches for its generation and digest",
        path="device/identity/keyring.py",
        anchor="if slot is not None and slot.generation == generation and slot.digest == digest:",
        replacement="if slot is not None:  # MUTANT: any file opens with the current slot",
        tests=("tests/identity/test_gallery_rollback.py", "tests/identity/test_gallery_tamper.py"),
    ),
    Mutant(
        name="gallery_pending_keyring",
        defence="a gallery write records the new key as pending first, so a power cut never loses it",
        path="device/identity/gallery_store.py",
        anchor="Keyring(current, pending, backups), self._master_key)",
        replacement="Keyring(current, None, backups), self._master_key)  # MUTANT: no pending key",
        tests=("tests/identity/test_crash_safety.py",),
    ),
    Mutant(
        name="door_seq_reload",
        defence="the door reloads each unit's last seq from its audit, so a replay after its restart fails",
        path="device/commands/door.py",
        anchor="    verifier.remember(audit.last_seqs())\n",
        replacement="    pass  # MUTANT: the door forgets what it saw before a restart\n",
        tests=("tests/consumers/test_door.py",),
    ),
    Mutant(
        name="door_watchdog_subscription",
        defence="the door feeds systemd's watchdog only while its subscription is confirmed (issue 26)",
        path="device/commands/door.py",
        anchor='    manager.watch("door subscription", consumer.subscribed.is_set)\n',
        replacement="    pass  # MUTANT: the watchdog is fed whether the door hears its unit or not\n",
        tests=("tests/consumers/test_door_service.py",),
    ),
    Mutant(
        name="consumer_access_probe",
        defence="a consumer listens only once its own probe came back: a unit certificate fails (issue 26)",
        path="device/consumers/consumer.py",
        anchor='    if not identity or "+" in settings.prefix or "#" in settings.prefix:\n',
        replacement="    if True:  # MUTANT: no access probe, a granted SUBACK alone counts as listening\n",
        tests=("tests/consumers/test_consumers_never_deaf.py",),
    ),
    Mutant(
        name="central_acl_building_prefix",
        defence="on the central broker a building may publish only under its own prefix (issue 27)",
        path="deploy/broker/bridge.py",
        anchor='        lines += [f"topic write {own}/{pattern}" for pattern in OUTBOUND]\n',
        replacement=(
            '        lines += [f"topic write {site}/+/{prefix}/{pattern}" for pattern in OUTBOUND]'
            "  # MUTANT: any building's prefix\n"
        ),
        tests=("tests/deploy/test_bridge.py",),
    ),
    Mutant(
        name="archive_tombstone",
        defence="a unit's subject_forgotten tombstones the subject in the rows an archive holds (issue 27)",
        path="device/consumers/archive.py",
        anchor="            steps.append((TOMBSTONE, (subject,)))\n",
        replacement='            steps.append(("SELECT 1 WHERE 0 = ?", (0,)))  # MUTANT: rows keep the id\n',
        tests=("tests/consumers/test_archive.py",),
    ),
    Mutant(
        name="typed_text_control_characters",
        defence="names, consent refs and operators with control characters are refused (issue 25)",
        path="device/errors.py",
        anchor="    found = unsafe_characters(text)\n    if found:\n",
        replacement="    found = unsafe_characters(text)\n    if False:  # MUTANT: anything goes in\n",
        tests=("tests/identity/test_terminal_injection.py",),
    ),
    Mutant(
        name="rejected_command_log_limit",
        defence="a flood of refused commands gives a few log lines, not one each (issue 25)",
        path="device/events/command_gate.py",
        anchor="        if self._logged < self._burst:\n",
        replacement="        if True:  # MUTANT: one line per refusal\n",
        tests=("tests/events/test_rejected_command_log.py",),
    ),
    Mutant(
        name="commanders_file_check",
        defence="a trusted commanders file others may write is refused (issue 25)",
        path="device/events/signing.py",
        anchor="        check_trust_file(path, KEY_FILE_NAMES[COMMANDERS])\n",
        replacement="        pass  # MUTANT: whoever can write the file is trusted\n",
        tests=("tests/events/test_trust_files_and_presence.py",),
    ),
    Mutant(
        name="presence_out_of_retained_health",
        defence="retained health leaves out who is at the door unless configured (issue 25)",
        path="device/events/payloads.py",
        anchor='        left_out = {"alarms"} if presence else {"alarms", *PRESENCE_FIELDS}\n',
        replacement='        left_out = {"alarms"}  # MUTANT: presence in every retained health\n',
        tests=("tests/events/test_trust_files_and_presence.py",),
    ),
    Mutant(
        name="door_needs_its_seq_record",
        defence="the door refuses to start without its seq record unless --start-fresh (issue 25)",
        path="device/commands/door.py",
        anchor="        if not start_fresh:\n",
        replacement="        if False:  # MUTANT: a missing record is silently begun again\n",
        tests=("tests/consumers/test_door_seq_record.py",),
    ),
    Mutant(
        name="commands_wait_for_the_clock",
        defence="commands are refused until the unit's clock is synchronised (issue 25)",
        path="device/events/command_gate.py",
        anchor="        if not self._clock_synchronised():\n",
        replacement="        if False:  # MUTANT: expiry trusted on any clock\n",
        tests=("tests/events/test_clock_gate.py",),
    ),
    Mutant(
        name="unit_key_pinned",
        defence="a unit key that differs from the registered one needs an explicit rotation (issue 25)",
        path="device/events/signing.py",
        anchor="    if known is not None and not rotate:\n",
        replacement="    if False:  # MUTANT: a changed key is taken silently\n",
        tests=("tests/deploy/test_unit_key_registry.py",),
    ),
)
