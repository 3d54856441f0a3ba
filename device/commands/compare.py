"""``device compare IMG_A IMG_B [--json]`` and ``device compare --pairs CSV [--json]``.

Cosine similarity between the largest face of each picture, and whether it reaches the configured
``matching.threshold``. With ``--json`` one object per line: ``a``, ``b``, ``similarity`` (null when either
picture has no face) and ``match``. For calibrating the threshold on a unit's own pictures; nothing is
stored and nothing is published.

Pairs file: CSV with the header ``a,b`` or ``a,b,same``; relative image paths are relative to the CSV
file's folder. With ``same`` (1 = one person, 0 = two people) each result also carries ``same`` and a last
line sums the run up: TAR at FAR 1e-2 and 1e-3, best accuracy and its threshold, accuracy at
``matching.threshold`` (``device.identity.verification``; with ``--json`` an object ``{"summary": ...}``).
Exit code 0 when every picture could be read, 1 when one could not (its rows still print, with
similarity null), 2 for bad usage or a bad config.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.atomicio import read_capped
from device.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandRegistry, config_from_args
from device.errors import UserError
from device.identity.verification import LabelledPair, verification_summary
from device.runtime.service import open_stages
from device.types import Vector
from device.vision.faces import FaceAnalyzer, ImageError, load_image_rgb

MAX_PAIRS_FILE_BYTES = 16 * 1024 * 1024
USAGE = "usage: device compare IMG_A IMG_B [--json]  or  device compare --pairs CSV [--json]"


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "compare",
        compare_command,
        "similarity of the largest face in two pictures (or in each pair of a CSV) and match/no match",
    )
    parser.add_argument("images", nargs="*", metavar="IMG", help="two pictures: IMG_A IMG_B")
    parser.add_argument(
        "--pairs",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV with header a,b (or a,b,same with 1/0: adds a TAR/FAR/accuracy summary): one pair per row",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


class PairsFileError(UserError):
    """The pairs file cannot be read as pairs: a usage problem."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    similarity: float | None
    match: bool
    same: bool | None = None  # from the CSV's optional same column


SAME_VALUES = {"1": True, "0": False}


def read_pairs(path: Path) -> list[tuple[str, str, bool | None]]:
    try:
        text = read_capped(path, MAX_PAIRS_FILE_BYTES, "the pairs file").decode("utf-8")
    except OSError as error:
        raise PairsFileError(f"{path}: cannot read the file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise PairsFileError(f"{path}: not UTF-8 text") from None
    rows = list(csv.reader(text.splitlines()))
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header not in (["a", "b"], ["a", "b", "same"]):
        raise PairsFileError(f"{path}: the first line must be the header a,b or a,b,same")
    labelled = len(header) == 3
    pairs: list[tuple[str, str, bool | None]] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header) or not row[0].strip() or not row[1].strip():
            expected = "two image paths and same (1/0)" if labelled else "two image paths"
            raise PairsFileError(f"{path}:{number}: expected {expected}, got {row!r}")
        same = None
        if labelled:
            if row[2].strip() not in SAME_VALUES:
                raise PairsFileError(f"{path}:{number}: same must be 1 or 0, got {row[2]!r}")
            same = SAME_VALUES[row[2].strip()]
        pairs.append((row[0].strip(), row[1].strip(), same))
    return pairs


class EmbeddingCache:
    """Each picture is analysed once, however many pairs it appears in."""

    def __init__(self, analyzer: FaceAnalyzer, base_dir: Path | None, max_pixels: int) -> None:
        self._max_pixels = max_pixels
        self._analyzer = analyzer
        self._base_dir = base_dir
        self._vectors: dict[str, Vector | None] = {}
        self.failed: list[str] = []

    def resolve(self, name: str) -> Path:
        path = Path(name)
        if self._base_dir is not None and not path.is_absolute():
            path = self._base_dir / path
        return path

    def vector(self, name: str) -> Vector | None:
        if name not in self._vectors:
            try:
                face = self._analyzer.largest(load_image_rgb(self.resolve(name), self._max_pixels))
            except ImageError as error:
                print(f"error: {error}", file=sys.stderr)
                self.failed.append(name)
                face = None
            self._vectors[name] = None if face is None else face.embedding
        return self._vectors[name]


def compare_pairs(
    pairs: list[tuple[str, str, bool | None]], cache: EmbeddingCache, threshold: float
) -> Iterator[Comparison]:
    for a, b, same in pairs:
        first, second = cache.vector(a), cache.vector(b)
        if first is None or second is None:
            yield Comparison(a, b, None, False, same)
            continue
        similarity = float(np.dot(first, second))
        yield Comparison(a, b, similarity, similarity >= threshold, same)


def format_text(comparison: Comparison) -> str:
    if comparison.similarity is None:
        return f"{comparison.a}  {comparison.b}  similarity -  no face"
    verdict = "match" if comparison.match else "no match"
    return f"{comparison.a}  {comparison.b}  similarity {comparison.similarity:.4f}  {verdict}"


def format_json(comparison: Comparison) -> str:
    similarity = None if comparison.similarity is None else round(comparison.similarity, 6)
    fields: dict[str, object] = {
        "a": comparison.a,
        "b": comparison.b,
        "similarity": similarity,
        "match": comparison.match,
    }
    if comparison.same is not None:
        fields["same"] = comparison.same
    return json.dumps(fields)


def format_summary(summary: dict[str, float | int | None], as_json: bool) -> str:
    if as_json:
        return json.dumps({"summary": summary})
    return "summary: " + "  ".join(
        f"{key} {'-' if value is None else value}" for key, value in summary.items()
    )


def command_line_pair(images: list[str]) -> list[tuple[str, str, bool | None]]:
    return [(str(images[0]), str(images[1]), None)]


def compare_command(args: argparse.Namespace) -> int:
    if (args.pairs is None) == (len(args.images) == 0) or (args.pairs is None and len(args.images) != 2):
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    config = config_from_args(args)
    pairs = read_pairs(args.pairs) if args.pairs is not None else command_line_pair(args.images)
    analyzer = FaceAnalyzer.from_stages(open_stages(config))
    base_dir = args.pairs.resolve().parent if args.pairs is not None else None
    cache = EmbeddingCache(analyzer, base_dir, config.limits.max_image_pixels)
    formatter = format_json if args.json else format_text
    labelled: list[LabelledPair] = []
    for comparison in compare_pairs(pairs, cache, config.matching.threshold):
        print(formatter(comparison), flush=True)
        if comparison.same is not None:
            labelled.append(LabelledPair(comparison.similarity, comparison.same))
    if labelled:
        summary = verification_summary(labelled, config.matching.threshold)
        print(format_summary(summary, args.json), flush=True)
    return EXIT_FAILURE if cache.failed else EXIT_OK
