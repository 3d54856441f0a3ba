"""Measuring presentation-attack detection the ISO/IEC 30107-3 way, over a folder of presentations.

Layout: ``DIR/bona_fide/*`` and ``DIR/attack/<species>/*``, each file one presentation: a still image
(.jpg/.jpeg/.png/.bmp) or a clip (.avi/.mp4/.mkv/.mjpeg). A still is judged on its largest face with the
cues one picture allows (texture, frame edges, spectrum); a clip like a visit: the best samples of its
largest face (quality gate's score) through the whole PAD stage.

Terms (ISO/IEC 30107-3):
- APCER (attack presentation classification error rate), per presentation attack instrument species: the
  share of attack presentations classified bona fide; the standard reports the worst species;
- BPCER (bona fide presentation classification error rate): the share of bona fide presentations
  classified as attacks;
- a presentation with no face found is a failure to acquire: counted apart, not in either rate;
- when no error was seen in N presentations, the 95 % upper bound of the rate is 3/N ("rule of three").
A PAD verdict of "abstain" (every cue abstained) counts as bona fide: the unit would let it through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.config import QualitySection
from device.types import Detection, RgbImage
from device.vision.faces import Detector, load_image_rgb
from device.vision.liveness import Liveness, LivenessStage, PadSample, pad_sample
from device.vision.quality import assess

log = logging.getLogger(__name__)

STILL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
CLIP_SUFFIXES = {".avi", ".mp4", ".mkv", ".mjpeg", ".mov"}
BONA_FIDE = "bona_fide"
ATTACK = "attack"


@dataclass(frozen=True)
class Presentation:
    path: Path
    species: str  # "bona_fide" or the attack species
    liveness: Liveness | None  # None: no face found (failure to acquire)

    @property
    def classified_attack(self) -> bool:
        return self.liveness is not None and self.liveness.passed is False


@dataclass
class Tally:
    presentations: int = 0
    errors: int = 0
    failures_to_acquire: int = 0
    error_files: list[str] = field(default_factory=list)

    def rate(self) -> float | None:
        return None if self.presentations == 0 else self.errors / self.presentations

    def upper_95(self) -> float | None:
        """Rule of three when no error was seen; None otherwise (the observed rate is the estimate)."""
        if self.presentations == 0 or self.errors:
            return None
        return min(1.0, 3.0 / self.presentations)


def presentations_in(directory: Path) -> Iterable[tuple[str, Path]]:
    """(species, file) for every presentation in the layout, sorted for a stable report."""
    bona_fide = directory / BONA_FIDE
    if bona_fide.is_dir():
        for path in sorted(bona_fide.iterdir()):
            if path.suffix.lower() in STILL_SUFFIXES | CLIP_SUFFIXES:
                yield BONA_FIDE, path
    attack = directory / ATTACK
    if attack.is_dir():
        for species_dir in sorted(p for p in attack.iterdir() if p.is_dir()):
            for path in sorted(species_dir.iterdir()):
                if path.suffix.lower() in STILL_SUFFIXES | CLIP_SUFFIXES:
                    yield species_dir.name, path


def largest(detections: list[Detection]) -> Detection | None:
    return max(detections, key=lambda d: d.box.area) if detections else None


def judge_still(image: RgbImage, detector: Detector, stage: LivenessStage) -> Liveness | None:
    face = largest(detector.detect(image))
    return None if face is None else stage.still(image, face.box)


def judge_frames(
    frames: Iterable[RgbImage],
    detector: Detector,
    stage: LivenessStage,
    quality: QualitySection,
    best_k: int,
) -> Liveness | None:
    """A clip as one visit: the largest face's best ``best_k`` samples by the quality gate's score."""
    scored: list[tuple[float, int, PadSample]] = []
    for index, image in enumerate(frames):
        face = largest(detector.detect(image))
        if face is None:
            continue
        report = assess(image, face, quality)
        score = report.score if report.accepted else -1.0
        scored.append((score, index, pad_sample(image, face.box, face.keypoints[:2])))
    if not scored:
        return None
    best = sorted(scored, key=lambda item: (-item[0], item[1]))[:best_k]
    return stage.visit([sample for _, _, sample in sorted(best, key=lambda item: item[1])])


def clip_frames(path: Path) -> Iterable[RgbImage]:
    from device.vision.capture.file import FileSource
    from device.vision.capture.source import EndOfStream

    source = FileSource(path)
    source.open()
    try:
        while True:
            try:
                yield source.read()
            except EndOfStream:
                return
    finally:
        source.close()


def evaluate(
    directory: Path, detector: Detector, stage: LivenessStage, quality: QualitySection, best_k: int
) -> list[Presentation]:
    results = []
    for species, path in presentations_in(directory):
        try:
            if path.suffix.lower() in CLIP_SUFFIXES:
                verdict = judge_frames(clip_frames(path), detector, stage, quality, best_k)
            else:
                verdict = judge_still(load_image_rgb(path), detector, stage)
        except Exception as error:  # one unreadable file must not end the measurement
            log.warning("%s: cannot be judged: %s", path, error)
            verdict = None
        results.append(Presentation(path, species, verdict))
    return results


def report(results: list[Presentation]) -> dict[str, Any]:
    """APCER per species and the worst, BPCER, counts and rule-of-three bounds, as one JSON document."""
    tallies: dict[str, Tally] = {}
    for result in results:
        tally = tallies.setdefault(result.species, Tally())
        if result.liveness is None:
            tally.failures_to_acquire += 1
            continue
        tally.presentations += 1
        is_error = result.classified_attack if result.species == BONA_FIDE else not result.classified_attack
        if is_error:
            tally.errors += 1
            tally.error_files.append(result.path.name)
    bona_fide = tallies.pop(BONA_FIDE, Tally())
    species = {name: describe(tally, "apcer") for name, tally in sorted(tallies.items())}
    rated = [(name, tally.rate()) for name, tally in tallies.items() if tally.rate() is not None]
    worst = max(rated, key=lambda item: (item[1] or 0.0, item[0]), default=None)
    return {
        "standard": "ISO/IEC 30107-3",
        "bpcer": describe(bona_fide, "bpcer"),
        "apcer": species,
        "worst_apcer": None if worst is None else {"species": worst[0], **species[worst[0]]},
        "notes": [
            "APCER: attack presentations classified bona fide, per species; BPCER: bona fide "
            "presentations classified attack",
            "upper_95 is the rule of three (3/N), given only when no error was seen",
            "failures_to_acquire (no face found) are counted apart, in neither rate",
        ],
    }


def describe(tally: Tally, rate_name: str) -> dict[str, Any]:
    rate = tally.rate()
    upper = tally.upper_95()
    return {
        rate_name: None if rate is None else round(rate, 4),
        "errors": tally.errors,
        "presentations": tally.presentations,
        "upper_95": None if upper is None else round(upper, 4),
        "failures_to_acquire": tally.failures_to_acquire,
        "error_files": tally.error_files,
    }
