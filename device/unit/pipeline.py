"""The unit's main loop: capture -> motion gate -> detect -> track -> quality -> align -> embed -> match ->
decide -> publish.

``Pipeline`` is the per-frame chain, synchronous and free of threads so that tests and the benchmark can
drive it frame by frame. ``Runner`` adds the service around it: the capture thread with its latest-frame
buffer, claims dropped by ``device claim``, periodic health, the systemd watchdog and a clean stop.

Order of work per frame, cheapest first, so that an empty entrance costs almost nothing:
1. the motion gate on a downscaled grey frame; the detector runs only when something moved or a track is
   alive (in armed mode also only while a claim is pending);
2. the tracker links detections to visits;
3. faces of undecided visits go through the quality gate; accepted ones are aligned and kept if they are
   among the visit's best K (chips only, never the frame);
4. a visit is decided as soon as it has enough good samples, else when it ends; the chips of every visit
   decided in this frame are embedded in one batch, matched, and then dropped.

Nothing about a face outlives its decision: the chips are handed over and released by ``VisitBook``, the
embeddings are local to ``_decide``, and a visit that ends before it was confirmed leaves nothing at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig
from device.events.publish import Publisher
from device.identity.claims import ClaimDrop
from device.identity.decide import ClaimSlot, VisitBook, decide
from device.identity.match import CachedIndex, GalleryView
from device.timing import LatencyRecorder
from device.types import Decision, DecisionType, Frame, PadOutcome, RgbImage, Track, TrackState
from device.unit.sysinfo import cpu_temperature_c
from device.vision.capture import CaptureThread
from device.vision.faces import Aligner, Detector, Embedder, Stages
from device.vision.liveness import LivenessStage, PadSample, pad_sample
from device.vision.motion import MotionGate
from device.vision.quality import assess
from device.vision.track import Tracker, TrackUpdate

log = logging.getLogger(__name__)

FPS_WINDOW = 64
CLAIM_POLL_S = 0.25
FRAME_WAIT_S = 0.25
HEALTH_TEXT_LIMIT = 160


@dataclass(frozen=True)
class Chip:
    """A sample kept for a visit until its decision: the aligned face (and, with PAD, its context)."""

    image: RgbImage
    pad: PadSample | None = None


class Pipeline:
    """One frame at a time; publishes each decision as it is made and returns it."""

    def __init__(
        self,
        config: UnitConfig,
        *,
        detector: Detector,
        embedder: Embedder,
        aligner: Aligner,
        gallery: GalleryView,
        publisher: Publisher,
        claims: ClaimSlot | None = None,
        latencies: LatencyRecorder | None = None,
        model_health: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        liveness: LivenessStage | None = None,
    ) -> None:
        self.config = config
        self._liveness = liveness if config.liveness.mode != "off" else None
        self._detector = detector
        self._embedder = embedder
        self._aligner = aligner
        self._gallery = gallery
        self._index = CachedIndex(gallery)
        self._publisher = publisher
        self.claims = claims or ClaimSlot(config.matching.claim_window_s, clock)
        self.latencies = latencies or LatencyRecorder()
        self._model_health = model_health
        self._clock = clock
        self._motion = MotionGate(config.motion)
        self._tracker = Tracker(config.tracking)
        self._book: VisitBook[Chip] = VisitBook(config.quality, config.matching)
        self._started = clock()
        self._frame_times: deque[float] = deque(maxlen=FPS_WINDOW)
        self.frames = 0
        self.detector_runs = 0
        self.motion_skips = 0
        self.decision_counts: Counter[str] = Counter()

    @classmethod
    def from_stages(
        cls,
        config: UnitConfig,
        stages: Stages,
        *,
        gallery: GalleryView,
        publisher: Publisher,
        claims: ClaimSlot | None = None,
        latencies: LatencyRecorder | None = None,
        liveness: LivenessStage | None = None,
    ) -> Pipeline:
        """The pipeline over opened model stages, reporting their accelerator state in its health."""
        return cls(
            config,
            detector=stages.detector,
            embedder=stages.embedder,
            aligner=stages.aligner,
            gallery=gallery,
            publisher=publisher,
            claims=claims,
            latencies=latencies,
            model_health=stages.health,
            liveness=liveness,
        )

    # --- per frame ---------------------------------------------------------------------------------

    def process(self, frame: Frame) -> list[Decision]:
        start = time.perf_counter()
        decisions = self._process(frame)
        self.latencies.add("frame", (time.perf_counter() - start) * 1000.0)
        self.frames += 1
        self._frame_times.append(self._clock())
        return decisions

    def _process(self, frame: Frame) -> list[Decision]:
        image = frame.image
        with self.latencies.time("motion"):
            moved = self._motion.update(image).moved
        if not self._should_detect(moved):
            self.motion_skips += 1
            return []
        with self.latencies.time("detect"):
            detections = self._detector.detect(image)
        self.detector_runs += 1
        with self.latencies.time("track"):
            update = self._tracker.update(detections, frame.ts)
        self._observe(image, update)
        return self._conclude(update)

    def _should_detect(self, moved: bool) -> bool:
        if self._tracker.has_active:
            return True  # a visit in progress is followed even while the person stands still
        if self.config.matching.require_claim and self.claims.peek() is None:
            return False  # armed mode: without a pending claim nobody is looked at
        return moved

    def _observe(self, image: RgbImage, update: TrackUpdate) -> None:
        for track, detection in update.matched:
            visit = self._book.visit(track.id)
            if visit.decided:
                visit.frames += 1
                continue  # decided visits need no more quality checks, crops or embeddings
            with self.latencies.time("quality"):
                report = assess(image, detection, self.config.quality)
            if not report.accepted:
                self._book.observe(track.id, 0.0, None, [reason.value for reason in report.reasons])
                continue
            with self.latencies.time("align"):
                chip = self._aligner(image, detection.keypoints)
            pad = None
            if self._liveness is not None:
                # the face and its context only: the frame itself is never kept
                pad = pad_sample(
                    image, detection.box, detection.keypoints[:2], infrared=self.config.capture.infrared
                )
            self._book.observe(track.id, report.score, Chip(chip, pad))

    def _conclude(self, update: TrackUpdate) -> list[Decision]:
        due: list[Track] = [
            track
            for track, _ in update.matched
            if track.state is TrackState.CONFIRMED and self._book.ready(track.id)
        ]
        for track in update.discarded:
            self._book.end(track.id)  # a spurious or passing box: it never was a visit, keep nothing
        ending = [track for track in update.ended if self._undecided(track.id)]
        decisions = self._decide([*due, *ending])
        for track in update.ended:
            self._book.end(track.id)
        return decisions

    def _undecided(self, track_id: int) -> bool:
        visit = self._book.visits.get(track_id)
        return visit is not None and not visit.decided

    def finish(self) -> list[Decision]:
        """End of the stream or shutdown: every visit still in view is decided with what it has."""
        update = self._tracker.finish()
        return self._conclude(update)

    # --- decisions ---------------------------------------------------------------------------------

    def _decide(self, tracks: list[Track]) -> list[Decision]:
        if not tracks:
            return []
        armed = self.config.matching.require_claim
        work: list[tuple[Track, int, list[Chip], str | None, tuple[str, ...]]] = []
        for track in tracks:
            visit, samples = self._book.take_samples(track.id)
            claim = self.claims.take()
            if armed and claim is None:
                log.debug("visit %d ended without a claim (armed mode): no decision", track.id)
                continue
            work.append((track, visit.frames, samples, claim, visit.samples.top_reasons()))
        if not work:
            return []
        chips = [chip.image for _, _, samples, _, _ in work for chip in samples]
        vectors = self._embed(chips)
        with self.latencies.time("gallery"):  # rebuilt only when the enrolled set changed
            index, _ = self._index.current()
        available = self.gallery_state() != "no_gallery"
        decisions = []
        offset = 0
        for track, frames, samples, claim, reasons in work:
            own = vectors[offset : offset + len(samples)]
            offset += len(samples)
            match = None
            if samples:
                with self.latencies.time("match"):
                    match = index.match(own, claim=claim)
            pad = self._pad(samples)
            decision = decide(
                track_id=track.id,
                frames=frames,
                samples=len(samples),
                match=match,
                config=self.config.matching,
                claim=claim,
                quality_reasons=reasons,
                gallery_available=available,
                pad=pad,
                liveness=self.config.liveness,
            )
            decisions.append(decision)
        del vectors, chips  # the visit's biometrics end here
        for decision in decisions:
            self.decision_counts[decision.type.value] += 1
            log.info(
                "decision track=%d %s%s frames=%d reasons=%s",
                decision.track_id,
                decision.type.value,
                f" subject={decision.subject_id}" if decision.type is DecisionType.RECOGNIZED else "",
                decision.frames,
                ",".join(decision.reasons),
            )
            self._publisher.publish_decision(decision)
        return decisions

    def _pad(self, samples: list[Chip]) -> PadOutcome | None:
        """Presentation-attack detection on the visit's best samples (None: PAD is off or had nothing)."""
        pad_samples = [chip.pad for chip in samples if chip.pad is not None]
        if self._liveness is None or not pad_samples:
            return None
        with self.latencies.time("pad"):
            return self._liveness.visit(pad_samples).outcome()

    def _embed(self, chips: list[RgbImage]) -> NDArray[np.float32]:
        if not chips:
            return np.zeros((0, 128), np.float32)
        with self.latencies.time("embed"):
            return self._embedder.embed(np.stack(chips))

    # --- control and health ------------------------------------------------------------------------

    def claim(self, subject_id: str) -> None:
        """Verification: the next decision checks this subject only (1:1)."""
        self.claims.set(subject_id)
        log.info("claim for %s pending for %.0f s", subject_id, self.config.matching.claim_window_s)

    def gallery_state(self) -> str:
        state = getattr(self._gallery, "state", "ok")
        return str(state)

    @property
    def active_tracks(self) -> int:
        return len(self._tracker.active)

    def fps(self) -> float:
        if len(self._frame_times) < 2:
            return 0.0
        span = self._frame_times[-1] - self._frame_times[0]
        return (len(self._frame_times) - 1) / span if span > 0 else 0.0

    def health(self) -> dict[str, Any]:
        """Operational numbers only (the events schema's ``pipeline`` part): never a subject or a face."""
        gallery_health = getattr(self._gallery, "health", None)
        gallery = gallery_health() if callable(gallery_health) else {"gallery_state": self.gallery_state()}
        models = self._model_health() if self._model_health is not None else {}
        alarms = []
        if gallery.get("gallery_state") == "no_gallery":
            alarms.append("gallery_unavailable")
        if any("fallback" in str(model.get("state", "")) for model in models.values()):
            alarms.append("accelerator_fallback")
        return {
            "uptime_s": round(self._clock() - self._started, 1),
            "fps": round(self.fps(), 2),
            "frames_processed": self.frames,
            "detector_runs": self.detector_runs,
            "motion_skipped": self.motion_skips,
            "active_tracks": self.active_tracks,
            "decisions": dict(self.decision_counts),
            "armed": self.config.matching.require_claim,
            "claim_pending": self.claims.peek() is not None,
            "stage_ms": self.latencies.summary(),
            "accelerator": {role: short(model.get("state")) for role, model in models.items()},
            "models": {role: {k: short(v) for k, v in model.items()} for role, model in models.items()},
            "gallery": {key: short(value) for key, value in gallery.items()},
            "alarms": alarms,
        }


def short(value: Any, limit: int = HEALTH_TEXT_LIMIT) -> Any:
    """Health travels in a bounded schema: long texts (error messages) are cut, numbers pass."""
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 3] + "..."
    return value


class Runner:
    """The service: capture thread -> pipeline, claims, health, watchdog; stops on ``stop_event``."""

    def __init__(
        self,
        pipeline: Pipeline,
        capture: CaptureThread,
        publisher: Publisher,
        *,
        stop_event: threading.Event,
        notifier: Any = None,
        claim_drop: ClaimDrop | None = None,
        health_interval_s: float = 30.0,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_temperature: Callable[[], float | None] = cpu_temperature_c,
    ) -> None:
        self.pipeline = pipeline
        self.capture = capture
        self.publisher = publisher
        self.stop_event = stop_event
        self._notifier = notifier
        self._claim_drop = claim_drop
        self._health_interval_s = health_interval_s
        self._on_decision = on_decision
        self._clock = clock
        self._cpu_temperature = cpu_temperature
        self._started = clock()

    def health(self) -> dict[str, Any]:
        health = self.pipeline.health()
        capture = {key: short(value) for key, value in self.capture.health().items()}
        health["uptime_s"] = round(self._clock() - self._started, 1)
        health["capture"] = capture
        health["dropped_frames"] = capture["dropped_frames"]
        health["camera_reconnects"] = capture["reconnects"]
        health["cpu_temp_c"] = self._cpu_temperature()
        if capture["state"] == "reconnecting":
            health["alarms"] = [*health["alarms"], "camera_lost"]
        return health

    def run(self) -> int:
        """Runs until the clip ends or ``stop_event`` is set; returns 0, or 1 when capture failed."""
        self.capture.start()
        self._notify("ready", f"running, gallery {self.pipeline.gallery_state()}")
        next_health = self._clock()  # a first report right away, then every interval
        next_claims = 0.0
        try:
            while not self.stop_event.is_set():
                self._notify_watchdog()
                now = self._clock()
                if now >= next_claims:
                    self._take_claims()
                    next_claims = now + CLAIM_POLL_S
                if now >= next_health:
                    health = self.health()
                    self.publisher.publish_health(health)
                    self._notify("status", summary_line(health))
                    next_health = now + self._health_interval_s
                frame = self.capture.get(timeout_s=FRAME_WAIT_S)
                if frame is None:
                    if self.capture.finished:
                        break
                    continue
                self._handle(self.pipeline.process(frame))
        finally:
            self._notify("stopping", "stopping")
            self.capture.stop()
            self._handle(self.pipeline.finish())
            self.publisher.publish_health(self.health())
        if self.capture.error is not None:
            log.error("capture failed: %s", self.capture.error)
            return 1
        return 0

    def _handle(self, decisions: list[Decision]) -> None:
        if self._on_decision is not None:
            for decision in decisions:
                self._on_decision(decision)

    def _take_claims(self) -> None:
        if self._claim_drop is None:
            return
        for claim in self._claim_drop.take():
            self.pipeline.claim(claim.subject_id)

    def _notify(self, what: str, status: str) -> None:
        if self._notifier is not None:
            getattr(self._notifier, what)(status)

    def _notify_watchdog(self) -> None:
        if self._notifier is not None:
            self._notifier()


def summary_line(health: Mapping[str, Any]) -> str:
    """One line for logs and ``systemctl status``."""
    decisions = health.get("decisions", {})
    return (
        f"fps {health.get('fps', 0)}; frames {health.get('frames_processed', 0)}; "
        f"decisions {sum(decisions.values()) if isinstance(decisions, dict) else 0}; "
        f"gallery {health.get('gallery', {}).get('gallery_state', '?')}"
    )
