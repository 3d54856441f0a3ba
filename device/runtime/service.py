"""Assembling the running unit from its config: models, gallery, camera, publisher, claims, watchdog.

Shared by ``device run`` (the systemd service), ``device demo`` and ``device bench`` so that all three run
exactly the same pipeline. Failures that a restart cannot fix (a missing or tampered model file, a file
source that does not exist) raise ``StartupError``; ``device run`` turns that into exit code 2, which the
systemd unit lists in ``RestartPreventExitStatus`` so that the unit does not crash-loop on it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from device.config import UnitConfig
from device.errors import EXIT_USAGE, UserError
from device.events.publish import Publisher, StdoutPublisher
from device.identity.claims import ClaimDrop
from device.identity.decide import ClaimSlot
from device.identity.live_gallery import LastSeenRecorder, LiveGallery
from device.identity.match import GalleryView
from device.layout import StateLayout
from device.runtime.pipeline import Pipeline, Runner
from device.runtime.sdnotify import Notifier, SystemdNotifier
from device.timing import LatencyRecorder
from device.types import Decision
from device.vision.capture import open_source
from device.vision.capture.source import CameraError
from device.vision.capture.thread import CaptureThread
from device.vision.faces import Stages, load_stages
from device.vision.liveness import LivenessStage, open_liveness
from device.vision.views import ViewSpec

log = logging.getLogger(__name__)


class StartupError(UserError):
    """The unit cannot start with this config and these files; restarting will not help."""

    exit_code = EXIT_USAGE


def open_stages(config: UnitConfig, latencies: LatencyRecorder | None = None) -> Stages:
    """The models, with their ``run`` calls timed into ``latencies`` when given."""
    from device.models.manifest import ModelFileError

    try:
        return load_stages(config, latencies=latencies)
    except (ModelFileError, FileNotFoundError, ValueError) as error:
        raise StartupError(f"cannot load the models: {error}") from None


def open_liveness_stage(config: UnitConfig) -> LivenessStage | None:
    """The presentation-attack stage (None when ``[liveness] mode = "off"``); its models like the others."""
    from device.models.manifest import ModelFileError

    try:
        return open_liveness(config)
    except (ModelFileError, FileNotFoundError, ValueError) as error:
        raise StartupError(f"cannot load the presentation-attack models: {error}") from None


@dataclass(frozen=True)
class UnitParts:
    """What the publisher and the pipeline share, made before either so that the publisher gets its
    command handlers at construction: the claim slot signed ``claim`` commands fill, the gallery whose
    version every event names, and the models that decided."""

    claims: ClaimSlot
    gallery: GalleryView
    models: dict[str, str]
    gallery_given: bool = False  # a gallery handed in (demo, tests): no last-seen bookkeeping

    @classmethod
    def for_unit(cls, config: UnitConfig, stages: Stages, gallery: GalleryView | None = None) -> UnitParts:
        return cls(
            claims=ClaimSlot(config.matching.claim_window_s),
            gallery=gallery if gallery is not None else LiveGallery.from_config(config),
            models=model_labels(stages),
            gallery_given=gallery is not None,
        )


def enrolled_claims(claims: ClaimSlot, gallery: GalleryView) -> Callable[[str], None]:
    """``on_claim`` for signed claim commands: the claim slot, for subjects enrolled on this unit only.

    A claim for anyone else could never match; refusing it at once (answer ``not_enrolled``, to a
    commander the unit trusts) tells the door at once instead of after a visit that cannot succeed.
    """

    def claim(subject_id: str) -> None:
        from device.events.command_gate import SubjectNotEnrolledError

        _, enrolled = gallery.templates()
        if subject_id not in enrolled:
            raise SubjectNotEnrolledError(f"{subject_id} is not enrolled on this unit")
        claims.set(subject_id)

    return claim


def model_labels(stages: Stages) -> dict[str, str]:
    """``role -> model@variant``, as events name the models that decided."""
    return {role: f"{model.get('model')}@{model.get('variant')}" for role, model in stages.health().items()}


def make_publisher(config: UnitConfig, parts: UnitParts | None = None) -> Publisher:
    """MQTT when ``mqtt.enabled`` (durable outbox, TLS; started), else one JSON line per decision.

    With ``parts``, signed claims reach the unit's claim slot and events name its models and gallery."""
    if not config.mqtt.enabled:
        return StdoutPublisher()
    try:
        from device.events.command_gate import command_table
        from device.events.mqtt_publisher import MqttPublisher, MqttSetupError
    except ImportError as error:
        raise StartupError(f"mqtt.enabled is true but the MQTT publisher cannot load: {error}") from None
    try:
        if parts is None:
            return MqttPublisher(config).start()
        gallery = parts.gallery
        return MqttPublisher(
            config,
            commands=command_table(on_claim=enrolled_claims(parts.claims, gallery)),
            models=parts.models,
            gallery_version=lambda: gallery.version,
        ).start()
    except (MqttSetupError, OSError) as error:
        # A missing certificate or key file: fix the files, a restart will not.
        raise StartupError(f"mqtt: {error}") from None


def watch_publisher(notifier: Notifier, publisher: Publisher) -> None:
    """The publisher's I/O becomes part of the watchdog ping: a dead or hung I/O thread means the outbox
    only grows and commands go unread, so systemd must restart the unit."""
    notifier.watch("mqtt_io", publisher.io_alive)


def check_source(config: UnitConfig) -> None:
    """A file source that is missing or unreadable is a config problem: say so before starting."""
    if config.capture.backend != "file":
        return
    source = open_source(config.capture)
    try:
        source.open()
    except CameraError as error:
        raise StartupError(f"capture.source: {error}") from None
    finally:
        source.close()


def build_runner(
    config: UnitConfig,
    *,
    stages: Stages,
    publisher: Publisher,
    stop_event: threading.Event,
    parts: UnitParts | None = None,
    latencies: LatencyRecorder | None = None,
    on_decision: Callable[[Decision], None] | None = None,
    notifier: Notifier | None = None,
    liveness: LivenessStage | None = None,
) -> Runner:
    """The service loop around the pipeline; ``parts`` are the ones the publisher was made with."""
    parts = parts if parts is not None else UnitParts.for_unit(config, stages)
    pipeline = Pipeline.from_stages(
        config,
        stages,
        gallery=parts.gallery,
        publisher=publisher,
        claims=parts.claims,
        latencies=latencies,
        liveness=liveness if liveness is not None else open_liveness_stage(config),
    )
    views = ViewSpec.for_unit(config, stages.detector.input_size)  # prepared by the camera side
    capture = CaptureThread(
        open_source(config.capture, views=views),
        config.capture.reconnect_backoff_max_s,
        views=views,
    )
    if notifier is None:
        notifier = SystemdNotifier.from_environment()
    watch_publisher(notifier, publisher)
    runner = Runner(
        pipeline,
        capture,
        publisher,
        stop_event=stop_event,
        notifier=notifier,
        claim_drop=ClaimDrop(StateLayout.from_config(config).claims, config.matching.claim_window_s),
        health_interval_s=config.mqtt.health_interval_s,
        # the enrolled set's last-seen day (recognised subjects only); not for a gallery handed in (demo)
        on_decision=on_decision if parts.gallery_given else LastSeenRecorder(config, then=on_decision),
    )
    return runner


def stop_on_signals(stop_event: threading.Event, received: list[str] | None = None) -> None:
    """SIGTERM (systemd stop) and SIGINT (Ctrl-C) end the loop after the current frame; the signal's
    name goes into ``received`` (for the run's closing summary)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.info("received %s: stopping", name)
        if received is not None:
            received.append(name)
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
