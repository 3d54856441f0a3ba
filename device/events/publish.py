"""The publish seam: where decisions and health leave the pipeline.

The pipeline only knows this protocol. The MQTT publisher (durable outbox, TLS broker) implements it for
the unit; ``StdoutPublisher`` serves demos and tests. Implementations receive decisions, never images or
embeddings, so nothing biometric can reach them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from device.types import Decision


class Publisher(Protocol):
    def publish_decision(self, decision: Decision) -> None: ...

    def publish_health(self, health: Mapping[str, Any]) -> None: ...

    def io_alive(self) -> bool:
        """False when the publisher's own I/O has died or hung (the watchdog then stops being fed)."""
        ...

    def close(self) -> None: ...


def decision_summary(decision: Decision) -> dict[str, Any]:
    """The decision's fields that may leave the pipeline (no images, boxes or vectors exist in it)."""
    return {
        "type": decision.type.value,
        "subject": decision.subject_id,
        "similarity": None if decision.similarity is None else round(decision.similarity, 4),
        "margin": None if decision.margin is None else round(decision.margin, 4),
        "frames": decision.frames,
        "reasons": list(decision.reasons),
        "track": decision.track_id,
    }


class StdoutPublisher:
    """Prints one JSON line per decision; health is printed only when asked for."""

    def __init__(self, stream: TextIO | None = None, *, show_health: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._show_health = show_health

    def publish_decision(self, decision: Decision) -> None:
        print(json.dumps(decision_summary(decision), sort_keys=True), file=self._stream, flush=True)

    def publish_health(self, health: Mapping[str, Any]) -> None:
        if self._show_health:
            print(json.dumps({"health": dict(health)}, sort_keys=True), file=self._stream, flush=True)

    def io_alive(self) -> bool:
        return True  # writes happen on the caller's thread: nothing of its own can hang

    def close(self) -> None:
        self._stream.flush()
