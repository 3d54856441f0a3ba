"""Measuring presentation-attack detection the ISO/IEC 30107-3 way, over a folder of presentations.

Layout: ``DIR/labels.csv`` (``device.evaluation.pad_split``: each file's label, species and source, and a
fixed split into a tune part and a held-back part), or else ``DIR/bona_fide/*`` and
``DIR/attack/<species>/*``; each file one presentation: a still image
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
Species whose name starts with ``bona_fide`` (``bona_fide``, ``bona_fide_clip``) are bona fide; each error
names the cues that decided it: the cues that rejected a bona fide presentation, or, for an attack let
through, ``none rejected`` with the weakest voting cue (the one closest to catching it) or ``all abstained``.
"""

from __future__ import annotations

import itertools
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
CLIP_SUFFIXES = {".avi", ".mp4", ".mkv", ".mjpeg", ".mov", ".webm", ".3gp"}
BONA_FIDE = "bona_fide"
ATTACK = "attack"
# A clip is judged on its first frames only, as the unit decides a visit within its first seconds (a visit
# is 0.5-2 s); longer public clips would only cost time (3 s at 30 fps).
VISIT_FRAMES = 90


@dataclass(frozen=True)
class Presentation:
    path: Path
    species: str  # "bona_fide" (or "bona_fide_<kind>") or the attack species
    liveness: Liveness | None  # None: no face found (failure to acquire)
    source: str = ""  # where it came from (a labelled set's repository), for the per-source figures
    part: str = ""  # the labelled set's split part ("tune" or "held_back"), "" without labels

    @property
    def bona_fide(self) -> bool:
        return self.species.startswith(BONA_FIDE)

    @property
    def classified_attack(self) -> bool:
        return self.liveness is not None and self.liveness.passed is False

    @property
    def is_error(self) -> bool:
        return self.classified_attack if self.bona_fide else not self.classified_attack


def deciding_cues(liveness: Liveness) -> list[str]:
    """What decided an error: the rejecting cues, or for a pass the weakest voting cue (or none voted)."""
    if liveness.passed is False:
        return list(liveness.failed_cues)
    voting = {name: cue.score for name, cue in liveness.cues.items() if cue.passed is not None}
    scored = {name: score for name, score in voting.items() if score is not None}
    if not voting:
        return ["all abstained"]
    if not scored:
        return ["none rejected"]
    weakest = min(scored, key=lambda name: scored[name])
    return ["none rejected", f"weakest {weakest} {scored[weakest]:.3f}"]


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


def judge_still(
    image: RgbImage, detector: Detector, stage: LivenessStage, min_face_px: int = 0
) -> Liveness | None:
    """The largest face's still verdict; None (failure to acquire) without a face of ``min_face_px``.

    The unit's quality gate never lets a face smaller than ``quality.min_face_px`` reach a decision, so
    such a face is not a presentation the unit would classify.
    """
    face = largest(detector.detect(image))
    if face is None or min(face.box.width, face.box.height) < min_face_px:
        return None
    return stage.still(image, face.box)


def judge_frames(
    frames: Iterable[RgbImage],
    detector: Detector,
    stage: LivenessStage,
    quality: QualitySection,
    best_k: int,
) -> Liveness | None:
    """A clip as one visit: the largest face's best ``best_k`` samples by the quality gate's score."""
    scored: list[tuple[float, int, PadSample]] = []
    for index, image in enumerate(itertools.islice(frames, VISIT_FRAMES)):
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


def labelled_presentations(directory: Path) -> Iterable[tuple[str, Path, str, str]]:
    """(species, file, source, part) for every row of ``directory/labels.csv``, in the file's order."""
    from device.evaluation.pad_split import read_labels, split

    rows = read_labels(directory)
    parts = split(rows)
    for row in rows:
        # the label rules: a species name must not turn an attack into bona fide or the other way round
        species = row.species
        if row.attack == species.startswith(BONA_FIDE):
            species = ATTACK if row.attack else BONA_FIDE
        yield species, row.path, row.source, str(parts[row.path])


def has_labels(directory: Path) -> bool:
    from device.evaluation.pad_split import LABELS_FILE

    return (directory / LABELS_FILE).is_file()


def evaluate(
    directory: Path, detector: Detector, stage: LivenessStage, quality: QualitySection, best_k: int
) -> list[Presentation]:
    results = []
    listed = (
        labelled_presentations(directory)
        if has_labels(directory)
        else ((species, path, "", "") for species, path in presentations_in(directory))
    )
    for species, path, source, part in listed:
        try:
            if path.suffix.lower() in CLIP_SUFFIXES:
                verdict = judge_frames(clip_frames(path), detector, stage, quality, best_k)
            else:
                verdict = judge_still(load_image_rgb(path), detector, stage, quality.min_face_px)
        except Exception as error:  # one unreadable file must not end the measurement
            log.warning("%s: cannot be judged: %s", path, error)
            verdict = None
        results.append(Presentation(path, species, verdict, source, part))
    return results


def tallies_of(results: Iterable[Presentation]) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for result in results:
        tally = tallies.setdefault(result.species, Tally())
        if result.liveness is None:
            tally.failures_to_acquire += 1
            continue
        tally.presentations += 1
        if result.is_error:
            tally.errors += 1
            tally.error_files.append(result.path.name)
    return tallies


def pooled(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.presentations += tally.presentations
        total.errors += tally.errors
        total.failures_to_acquire += tally.failures_to_acquire
        total.error_files.extend(tally.error_files)
    return total


def report(results: list[Presentation]) -> dict[str, Any]:
    """APCER per species and the worst, BPCER, counts and rule-of-three bounds, as one JSON document.

    With sources (a labelled set) also per source, and every error with the cues that decided it.
    """
    tallies = tallies_of(results)
    bona_fide_species = {name: tallies.pop(name) for name in sorted(tallies) if name.startswith(BONA_FIDE)}
    bona_fide = pooled(bona_fide_species.values())
    species = {name: describe(tally, "apcer") for name, tally in sorted(tallies.items())}
    rated = [(name, tally.rate()) for name, tally in tallies.items() if tally.rate() is not None]
    worst = max(rated, key=lambda item: (item[1] or 0.0, item[0]), default=None)
    document: dict[str, Any] = {
        "standard": "ISO/IEC 30107-3",
        "bpcer": describe(bona_fide, "bpcer"),
        "bpcer_species": {name: describe(tally, "bpcer") for name, tally in bona_fide_species.items()},
        "apcer": species,
        "worst_apcer": None if worst is None else {"species": worst[0], **species[worst[0]]},
        "errors": [
            {
                "file": result.path.name,
                "species": result.species,
                "source": result.source,
                "decided_by": deciding_cues(result.liveness),
                "cues": result.liveness.outcome().cues,
            }
            for result in results
            if result.liveness is not None and result.is_error
        ],
        "notes": [
            "APCER: attack presentations classified bona fide, per species; BPCER: bona fide "
            "presentations classified attack",
            "upper_95 is the rule of three (3/N), given only when no error was seen",
            "failures_to_acquire (no face found) are counted apart, in neither rate",
        ],
    }
    sources = sorted({result.source for result in results if result.source})
    if sources:
        document["sources"] = {
            source: {
                name: describe(tally, "bpcer" if name.startswith(BONA_FIDE) else "apcer")
                for name, tally in sorted(tallies_of(r for r in results if r.source == source).items())
            }
            for source in sources
        }
    return document


def report_parts(results: list[Presentation]) -> dict[str, Any]:
    """A labelled set: the tune part, the held-back part and both together, each a ``report``."""
    from device.evaluation.pad_split import Part

    return {
        "split": "device.evaluation.pad_split: by person and source, fixed before any cue was scored",
        **{str(part): report([r for r in results if r.part == part]) for part in Part},
        "all": report(results),
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
