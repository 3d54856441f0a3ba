"""The unit's main loop: capture -> motion gate -> detect -> track -> quality -> align -> embed -> match ->
decide -> publish.

``Pipeline`` is the per-frame chain, synchronous so that tests and the benchmark can drive it frame by
frame. ``Runner`` adds the service around it: the capture thread with its latest-frame buffer, claims
dropped by ``device claim``, periodic health, the systemd watchdog and a clean stop.

Work off the pipeline thread (issue 16): the capture side prepares each frame's views (the motion gate's
grey picture, the detector's letterbox: ``device.vision.views``), and the ``Runner`` hands the pipeline the
next frame before the current one (``Pipeline.prefetch``), so that its detection runs on a worker thread
while this frame's faces are assessed, aligned, embedded and decided. With an accelerator the frame then
costs about max(inference, CPU work) instead of their sum. Detection is a pure function of the frame, so
the results are the same either way; a detection made ahead and not needed is dropped (and counted).
The service detects ahead only where that pays (``detect_ahead_pays``): on a CPU whose every core runs
the models' threads, a worker thread only slows inference down (``make bench`` measures both ways).

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
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig
from device.events.publish import Publisher
from device.identity.claims import ClaimDrop
from device.identity.decide import ClaimSlot, VisitBook, decide
from device.identity.match import CachedIndex, GalleryView
from device.runtime.sdnotify import Notifier
from device.runtime.sysinfo import cpu_temperature_c
from device.timing import LatencyRecorder
from device.types import Decision, DecisionType, Detection, Frame, PadOutcome, RgbImage, Track, TrackState
from device.vision.capture.thread import CaptureThread
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


@dataclass(frozen=True)
class DueVisit:
    """A visit whose decision is due, with what the book gave up for it (its samples leave the book here)."""

    track: Track
    frames: int
    samples: list[Chip]
    claim: str | None
    quality_reasons: tuple[str, ...]


def detect_ahead_pays(detector_state: str, cpus: int | None, cpu_threads: int) -> tuple[bool, str]:
    """Whether detecting the next frame on a worker thread shortens the frame, and why: yes when the
    detector runs on an accelerator (its inference leaves the CPU to the pipeline thread) or when the CPU
    has a core the models' threads leave free; no when every core runs inference, where the parallel
    parts only slow the models down (measured: ``inference_slowdown_when_overlapped`` in ``make bench``)."""
    if not detector_state.startswith("cpu"):
        return True, f"the detector runs on {detector_state.split(' ')[0]}, the CPU is free meanwhile"
    if cpus is not None and cpus > cpu_threads:
        return True, f"{cpus} CPU cores, the models use {cpu_threads}: one is left for the pipeline thread"
    return False, f"{cpus} CPU cores all run the models' {cpu_threads} threads: a worker would slow them"


class DetectAhead:
    """Detections of frames handed over in advance, made on one worker thread (started on first use).

    ``take(seq)`` gives the pending detection of frame ``seq``; any older one still pending belongs to a
    frame that will not be processed and is dropped.
    """

    def __init__(self, detect: Callable[[Frame], list[Detection]]) -> None:
        self._detect = detect
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[list[Detection]]] = {}
        self.submitted = 0
        self.discarded = 0

    def submit(self, frame: Frame) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-ahead")
        self._drop(self._pending.pop(frame.seq, None))
        self._pending[frame.seq] = self._executor.submit(self._detect, frame)
        self.submitted += 1

    def take(self, seq: int) -> Future[list[Detection]] | None:
        for older in [pending for pending in self._pending if pending < seq]:
            self._drop(self._pending.pop(older))
        return self._pending.pop(seq, None)

    def drop(self, seq: int) -> None:
        """Frame ``seq`` needs no detection after all."""
        self._drop(self.take(seq))

    def _drop(self, future: Future[list[Detection]] | None) -> None:
        if future is not None:
            future.cancel()
            self.discarded += 1

    def close(self) -> None:
        for future in self._pending.values():
            self._drop(future)
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


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
        self._ahead = DetectAhead(lambda frame: self._detect_now(frame, "detect_ahead"))
        self._detected_last = False
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
        """The pipeline over opened model stages, reporting their accelerator state (and the PAD models', when
        PAD is on) in its health."""
        return cls(
            config,
            detector=stages.detector,
            embedder=stages.embedder,
            aligner=stages.aligner,
            gallery=gallery,
            publisher=publisher,
            claims=claims,
            latencies=latencies,
            model_health=stages.health
            if liveness is None
            else lambda: {**stages.health(), **liveness.health()},
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
        grey = frame.views.motion_grey if frame.views is not None else None
        with self.latencies.time("motion"):
            moved = self._motion.update(image, grey).moved
        self._detected_last = self._should_detect(moved)
        if not self._detected_last:
            self.motion_skips += 1
            self._ahead.drop(frame.seq)
            return []
        ahead = self._ahead.take(frame.seq)
        if ahead is None:
            detections = self._detect_now(frame)
        else:
            with self.latencies.time("detect_wait"):  # what the worker had not finished yet
                detections = ahead.result()
        self.detector_runs += 1
        with self.latencies.time("track"):
            update = self._tracker.update(detections, frame.ts)
        self._observe(image, update)
        return self._conclude(update)

    def _detect_now(self, frame: Frame, stage: str = "detect") -> list[Detection]:
        with self.latencies.time(stage):  # "detect_ahead" on the worker thread
            return self._detector.detect(frame.image, frame.views)

    def prefetch(self, frame: Frame) -> bool:
        """Starts detecting ``frame``, the one after the frame about to be processed, on the worker thread
        if the detector will probably run on it (a visit in progress, or the detector ran on the last
        frame, or the motion gate is off); ``process(frame)`` then takes that result. True when started.

        Only a guess: whether the detector runs is still decided in ``process``, exactly as without it.
        """
        if self.config.matching.require_claim and self.claims.peek() is None and not self._tracker.has_active:
            return False
        if self.config.motion.enabled and not (self._tracker.has_active or self._detected_last):
            return False
        self._ahead.submit(frame)
        return True

    def close(self) -> None:
        """Stops the detect-ahead worker (if it was started); pending detections are dropped."""
        self._ahead.close()

    def detect_ahead_pays(self) -> tuple[bool, str]:
        """``detect_ahead_pays`` for this pipeline's detector, now (an Edge TPU may have fallen back)."""
        models = self._model_health() if self._model_health is not None else {}
        state = str(models.get("detector", {}).get("state", "cpu"))
        return detect_ahead_pays(state, os.cpu_count(), self.config.models.cpu_threads)

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
        work: list[DueVisit] = []
        for track in tracks:
            visit, samples = self._book.take_samples(track.id)
            claim = self.claims.take()
            if armed and claim is None:
                log.debug("visit %d ended without a claim (armed mode): no decision", track.id)
                continue
            work.append(DueVisit(track, visit.frames, samples, claim, visit.samples.top_reasons()))
        if not work:
            return []
        chips = [chip.image for due in work for chip in due.samples]
        vectors = self._embed(chips)
        with self.latencies.time("gallery"):  # rebuilt only when the enrolled set changed
            index, _ = self._index.current()
        available = self.gallery_state() != "no_gallery"
        decisions = []
        offset = 0
        for due in work:
            own = vectors[offset : offset + len(due.samples)]
            offset += len(due.samples)
            match = None
            if due.samples:
                with self.latencies.time("match"):
                    match = index.match(own, claim=due.claim)
            pad = self._pad(due.samples)
            decision = decide(
                track_id=due.track.id,
                frames=due.frames,
                samples=len(due.samples),
                match=match,
                config=self.config.matching,
                claim=due.claim,
                quality_reasons=due.quality_reasons,
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
        if gallery.get("gallery_key_source") == "file":
            alarms.append("master_key_unprotected")  # a plain key file: a copied card opens the gallery
        if any("fallback" in str(model.get("state", "")) for model in models.values()):
            alarms.append("accelerator_fallback")
        return {
            "uptime_s": round(self._clock() - self._started, 1),
            "fps": round(self.fps(), 2),
            "frames_processed": self.frames,
            "detector_runs": self.detector_runs,
            "motion_skipped": self.motion_skips,
            "detected_ahead": self._ahead.submitted,
            "detected_ahead_unused": self._ahead.discarded,
            "active_tracks": self.active_tracks,
            "decisions": dict(self.decision_counts),
            "armed": self.config.matching.require_claim,
            "claim_pending": self.claims.peek() is not None,
            "stage_ms": compact_latencies(self.latencies.summary()),
            "accelerator": {role: short(model.get("state")) for role, model in models.items()},
            "models": {role: model_summary(model) for role, model in models.items()},
            "gallery": {key: short(value) for key, value in gallery.items()},
            "alarms": alarms,
        }


# What health says of each model besides where it runs ("accelerator"): which CPU file it runs, why in
# one word (``device.models.cpu_variant.ChoiceBasis``) and the measured int8 speed-up behind it, e.g.
# ``["float", "default", 1.06]``. Five models (detector, embedder and PAD's three) must fit the 2 KiB
# health message with the stage latencies, the gallery and the capture state; the sentence and the
# timing are in the log at start, in ``<state_dir>/cpu_variant.json`` and in ``make bench``.
def model_summary(model: dict[str, Any]) -> list[Any]:
    return [model.get("cpu_variant"), model.get("cpu_variant_basis"), model.get("cpu_variant_int8_speedup")]


def compact_latencies(summary: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Per stage ``[median_ms, p95_ms, n]``: the same figures as ``LatencyRecorder.summary`` in half the
    bytes of the 2 KiB health message."""
    return {stage: [row["median_ms"], row["p95_ms"], row["n"]] for stage, row in summary.items()}


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
        notifier: Notifier | None = None,
        claim_drop: ClaimDrop | None = None,
        health_interval_s: float = 30.0,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_temperature: Callable[[], float | None] = cpu_temperature_c,
        detect_ahead: bool | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._detect_ahead_forced = detect_ahead  # None: where it pays (checked with every health report)
        self._detect_ahead = bool(detect_ahead)
        self.detect_ahead_reason = "set by the caller"
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
        health["cpu_temp_c"] = self._cpu_temperature()
        health["detect_ahead"] = self._detect_ahead
        health["detect_ahead_reason"] = short(self.detect_ahead_reason)
        if capture["state"] == "reconnecting":
            health["alarms"] = [*health["alarms"], "camera_lost"]
        return health

    def run(self) -> int:
        """Runs until the clip ends or ``stop_event`` is set; returns 0, or 1 when capture failed."""
        self.capture.start()
        if self._notifier is not None:
            self._notifier.ready(f"running, gallery {self.pipeline.gallery_state()}")
        next_health = self._clock()  # a first report right away, then every interval
        next_claims = 0.0
        upcoming: Frame | None = None  # taken from the capture buffer early, its detection under way
        try:
            while not self.stop_event.is_set():
                self._notify_watchdog()
                now = self._clock()
                if now >= next_claims:
                    self._take_claims()
                    next_claims = now + CLAIM_POLL_S
                if now >= next_health:
                    self._choose_detect_ahead()
                    health = self.health()
                    self.publisher.publish_health(health)
                    if self._notifier is not None:
                        self._notifier.status(summary_line(health))
                    next_health = now + self._health_interval_s
                frame = upcoming if upcoming is not None else self.capture.get(timeout_s=FRAME_WAIT_S)
                upcoming = None
                if frame is None:
                    if self.capture.finished:
                        break
                    continue
                if self._detect_ahead:
                    # Only a frame that is already waiting: a camera faster than the pipeline has one,
                    # an idle entrance does not (and then there is nothing to overlap anyway).
                    upcoming = self.capture.get(timeout_s=0.0)
                    if upcoming is not None:
                        self.pipeline.prefetch(upcoming)
                self._handle(self.pipeline.process(frame))
        finally:
            if self._notifier is not None:
                self._notifier.stopping("stopping")
            self.capture.stop()
            self.pipeline.close()
            self._handle(self.pipeline.finish())
            self.publisher.publish_health(self.health())
        if self.capture.error is not None:
            log.error("capture failed: %s", self.capture.error)
            return 1
        return 0

    def _choose_detect_ahead(self) -> None:
        if self._detect_ahead_forced is not None:
            return
        chosen, self.detect_ahead_reason = self.pipeline.detect_ahead_pays()
        if chosen != self._detect_ahead:
            log.info(
                "detecting the next frame ahead: %s (%s)", "on" if chosen else "off", self.detect_ahead_reason
            )
        self._detect_ahead = chosen

    def _handle(self, decisions: list[Decision]) -> None:
        if self._on_decision is not None:
            for decision in decisions:
                self._on_decision(decision)

    def _take_claims(self) -> None:
        if self._claim_drop is None:
            return
        for claim in self._claim_drop.take():
            self.pipeline.claim(claim.subject_id)

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
