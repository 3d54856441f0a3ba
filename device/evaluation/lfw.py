"""``device models eval --lfw DIR``: face verification on a folder laid out like LFW's View 2 folds.

The folder holds ``pairs.csv`` (``fold,a,b,same``; paths relative to the folder) and the pictures. Every
picture goes through the unit's own still-picture path (``FaceAnalyzer``: detector, dlib 5-point alignment,
embedder, largest face) with the shipped settings, once per CPU file (float, int8), in colour and as a grey
copy (luma in all three channels, what a NoIR camera at night gives). Pairs are scored by cosine and judged
by the LFW protocol (``device.evaluation.verification``); "cross" pairs compare one side in colour with the
other in grey (a resident enrolled from colour photos, seen at night, and the reverse).

LFW is web news photos of public figures, not an entrance camera: its figures bound what the unit does.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import DetectionSection, ModelsSection
from device.errors import UserError
from device.evaluation.verification import FARS, NO_FACE, ProtocolFigures, protocol
from device.models.accelerator import open_model
from device.types import RgbImage
from device.vision.detect import FaceDetector
from device.vision.embed import DESCRIPTOR_SIZE, FaceEmbedder, l2_normalise
from device.vision.faces import AnalyzedFace, FaceAnalyzer, load_image_rgb
from device.vision.shape_predictor5 import load_landmark_aligner

PAIRS_FILE = "pairs.csv"
PAIRS_COLUMNS = ("fold", "a", "b", "same")
DETECTOR = "blazeface_full_range"
EMBEDDER = "dlib_resnet_v1"
CpuFile = Literal["float", "int8"]
CPU_FILES: tuple[CpuFile, ...] = ("float", "int8")
# colour, grey copies, colour against grey, and colour with mirror averaging (when it is not shipped)
MODES = ("colour", "grey", "cross", "colour_mirror")


class LfwLayoutError(UserError):
    """The folder is not laid out like the LFW folds (no pairs.csv, a bad row, a missing picture)."""


@dataclass(frozen=True)
class Pair:
    fold: int
    a: str
    b: str
    same: bool


def read_pairs(root: Path) -> list[Pair]:
    """The pairs of ``root/pairs.csv``; every picture named must exist inside ``root``."""
    path = root / PAIRS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LfwLayoutError(f"{path}: cannot read ({error.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != PAIRS_COLUMNS:
        raise LfwLayoutError(f"{path}: the header must be {','.join(PAIRS_COLUMNS)}")
    pairs = []
    for line, row in enumerate(reader, start=2):
        try:
            pair = Pair(int(row["fold"]), row["a"], row["b"], _flag(row["same"]))
        except (TypeError, ValueError):
            raise LfwLayoutError(f"{path}:{line}: expected fold (integer), a, b, same (0 or 1)") from None
        for name in (pair.a, pair.b):
            picture = (root / name).resolve()
            if not picture.is_relative_to(root.resolve()) or not picture.is_file():
                raise LfwLayoutError(f"{path}:{line}: {name} is not a picture inside {root}")
        pairs.append(pair)
    if not pairs:
        raise LfwLayoutError(f"{path}: no pairs")
    return pairs


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


def grey_copy(image_rgb: RgbImage) -> RgbImage:
    """Luma in all three channels (ITU-R BT.601, as a monochrome sensor or a NoIR camera renders it)."""
    luma = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(np.repeat(luma[:, :, None], 3, axis=2))


@dataclass(frozen=True)
class PictureEmbeddings:
    """One vector per picture (largest face), zeros where no face was found."""

    names: list[str]
    vectors: NDArray[np.float32]  # (N, 128)
    found: NDArray[np.bool_]
    ms_per_image: float  # median wall time of detection + alignment + embedding of one picture

    def index(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.names)}


def embed_pictures(
    analyzer: FaceAnalyzer,
    root: Path,
    names: Iterable[str],
    prepare: Callable[[RgbImage], RgbImage] = lambda image: image,
    *,
    mirrored: list[NDArray[np.float32]] | None = None,
) -> PictureEmbeddings:
    """``mirrored``: filled, per picture, with the embedding mirror averaging would give (the face's own
    and its chip's mirror image's, averaged): what ``models.embed_mirror`` would change, on the same
    faces. Its extra time is not in ``ms_per_image``."""
    ordered = list(names)
    vectors = np.zeros((len(ordered), DESCRIPTOR_SIZE), dtype=np.float32)
    found = np.zeros(len(ordered), dtype=bool)
    times = []
    for position, name in enumerate(ordered):
        image = prepare(load_image_rgb(root / name))
        start = time.perf_counter()
        face = labelled_face(analyzer.analyze(image), image.shape[1], image.shape[0])
        times.append((time.perf_counter() - start) * 1000.0)
        if face is not None:
            vectors[position] = face.embedding
            found[position] = True
        if mirrored is not None:
            mirrored.append(
                np.zeros(DESCRIPTOR_SIZE, np.float32) if face is None else mirror_mean(analyzer, face)
            )
    return PictureEmbeddings(ordered, vectors, found, float(np.median(times)) if times else 0.0)


def mirror_mean(analyzer: FaceAnalyzer, face: AnalyzedFace) -> NDArray[np.float32]:
    """What ``FaceEmbedder(mirror=True)`` gives: this face's embedding and its mirror image's, averaged."""
    flipped = analyzer.embedder.embed(np.ascontiguousarray(face.chip[None, :, ::-1]))[0]
    averaged: NDArray[np.float32] = l2_normalise((face.embedding + flipped)[None])[0]
    return averaged


def labelled_face(faces: list[AnalyzedFace], width: int, height: int) -> AnalyzedFace | None:
    """The face LFW's label is about: its pictures are cut around that face, so the one nearest the
    centre (a larger face of someone else near a corner is not it)."""
    centre = np.array([width / 2.0, height / 2.0])

    def distance(face: AnalyzedFace) -> float:
        box = face.detection.box
        return float(np.linalg.norm(np.array([(box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0]) - centre))

    return min(faces, key=distance, default=None)


def pair_similarities(
    pairs: list[Pair], first: PictureEmbeddings, second: PictureEmbeddings
) -> NDArray[np.float64]:
    """Cosine of each pair (a from ``first``, b from ``second``); ``NO_FACE`` where either has no face."""
    where_first, where_second = first.index(), second.index()
    a = np.array([where_first[pair.a] for pair in pairs])
    b = np.array([where_second[pair.b] for pair in pairs])
    cosines = np.sum(first.vectors[a].astype(np.float64) * second.vectors[b], axis=1)
    both = first.found[a] & second.found[b]
    result: NDArray[np.float64] = np.where(both, cosines, NO_FACE)
    return result


def cpu_analyzer(
    models_dir: Path,
    cpu_file: CpuFile,
    *,
    detection: DetectionSection | None = None,
    mirror: bool | None = None,
    threads: int = 1,
) -> FaceAnalyzer:
    """The unit's still-picture path on one CPU file; by default the shipped detection and mirror settings."""
    models = ModelsSection(dir=models_dir, accelerator="cpu", cpu_variant=cpu_file, cpu_threads=threads)
    return FaceAnalyzer(
        FaceDetector(open_model(models, DETECTOR), detection or DetectionSection()),
        FaceEmbedder(
            open_model(models, EMBEDDER),
            mirror=models.embed_mirror if mirror is None else mirror,
            mirror_grey=models.embed_mirror_grey,
        ),
        load_landmark_aligner(models_dir),
    )


def figures_json(
    figures: ProtocolFigures, pictures_without_face: int, ms_per_image: float | None
) -> dict[str, Any]:
    def tar(values: dict[float, float]) -> dict[str, float]:
        return {f"tar_at_far_{far:g}": round(values[far], 4) for far in FARS}

    return {
        "mean_accuracy": round(figures.mean_accuracy, 4),
        **tar(figures.tar_at_far),
        "best_accuracy_fitted": round(figures.best_accuracy, 4),
        "images_without_face": pictures_without_face,
        "ms_per_image": None if ms_per_image is None else round(ms_per_image, 2),
        "folds": [
            {
                "fold": fold.fold,
                "pairs": fold.pairs,
                "threshold": round(fold.threshold, 4),
                "accuracy": round(fold.accuracy, 4),
                **tar(fold.tar_at_far),
            }
            for fold in figures.folds
        ],
    }


def lfw_metrics(
    models_dir: Path,
    root: Path,
    cpu_files: Iterable[CpuFile] = CPU_FILES,
    *,
    grey: bool = True,
    detection: DetectionSection | None = None,
    mirror: bool | None = None,
) -> dict[str, Any]:
    """Per CPU file: colour (and grey and cross, with ``grey``) figures by the LFW protocol."""
    pairs = read_pairs(root)
    names = sorted({name for pair in pairs for name in (pair.a, pair.b)})
    same = np.array([pair.same for pair in pairs])
    folds = np.array([pair.fold for pair in pairs], dtype=np.int64)
    result: dict[str, Any] = {"pairs": len(pairs), "images": len(names)}
    for cpu_file in cpu_files:
        analyzer = cpu_analyzer(models_dir, cpu_file, detection=detection, mirror=mirror)
        mirroring = ModelsSection(dir=models_dir).embed_mirror if mirror is None else mirror
        mirrored: list[NDArray[np.float32]] | None = None if mirroring else []
        colour = embed_pictures(analyzer, root, names, mirrored=mirrored)
        runs = {"colour": (colour, colour)}
        if mirrored is not None:  # the alternative, on the same faces
            averaged = PictureEmbeddings(names, np.stack(mirrored), colour.found, 0.0)
            runs["colour_mirror"] = (averaged, averaged)
        if grey:
            grey_run = embed_pictures(analyzer, root, names, grey_copy)
            runs["grey"] = (grey_run, grey_run)
            runs["cross"] = (colour, grey_run)
        per_mode = {}
        for mode, (first, second) in runs.items():
            similarities = pair_similarities(pairs, first, second)
            if mode == "cross":  # both ways round: enrolled in colour seen in grey, and the reverse
                similarities = np.concatenate([similarities, pair_similarities(pairs, second, first)])
                figures = protocol(similarities, np.tile(same, 2), np.tile(folds, 2))
            else:
                figures = protocol(similarities, same, folds)
            missing = int((~first.found).sum() + (0 if first is second else (~second.found).sum()))
            # the mirror row's extra inference is not timed: no figure rather than a wrong one
            ms = (
                None if mode == "colour_mirror" else float(np.mean([first.ms_per_image, second.ms_per_image]))
            )
            per_mode[mode] = figures_json(figures, missing, ms)
        result[cpu_file] = per_mode
    return result


def report_lines(metrics: dict[str, Any]) -> list[str]:
    """The figures as a table: one row per fold and one overall, per CPU file and mode."""
    lines = [f"{metrics['pairs']} pairs, {metrics['images']} images; threshold chosen on the other folds"]
    header = f"{'file':6} {'mode':13} {'fold':>7} {'accuracy':>9} {'TAR@1e-3':>9} {'TAR@1e-2':>9}"
    lines.append(header + f" {'no face':>8} {'ms/image':>9}")
    for cpu_file in CPU_FILES:
        for mode, figures in metrics.get(cpu_file, {}).items():
            for fold in figures["folds"]:
                lines.append(
                    f"{cpu_file:6} {mode:13} {fold['fold']:>7} {fold['accuracy']:>9.2%} "
                    f"{fold['tar_at_far_0.001']:>9.2%} {fold['tar_at_far_0.01']:>9.2%}"
                )
            lines.append(
                f"{cpu_file:6} {mode:13} {'overall':>7} {figures['mean_accuracy']:>9.2%} "
                f"{figures['tar_at_far_0.001']:>9.2%} {figures['tar_at_far_0.01']:>9.2%} "
                f"{figures['images_without_face']:>8} {_ms(figures['ms_per_image']):>9}"
            )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
