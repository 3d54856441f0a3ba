"""A labelled set of real captures (``labels.csv``) and its fixed split into a tune part and a held-back part.

``labels.csv`` (as in ``../shared/pad/public``) has one row per presentation:
``file,label,species,repo,commit,path,label_basis,licence``; ``file`` is relative to the folder holding the
CSV, ``label`` is ``bona_fide`` or ``attack``.

The split keeps every person and every capture source on one side, so that a setting looked at on the tune
part has never seen the held-back part's people, cameras or attack instruments (ISO/IEC 30107-3 asks the
same of a test set). It was fixed from the file list alone, before any cue was scored on it:

- NUAA frames (``ClientFace``/``ClientRaw``/``ImposterFace``/``ImposterRaw`` with a numbered subject, in
  two repositories that copy the same database): subjects 0001-0004 tune, 0005-0008 held back. Splitting
  by repository instead would put the same people on both sides.
- Selfie/video sets with a person id in the file name (``--<hex id>_``): the ids in sorted order,
  alternately tune and held back (a person's stills and clips stay together).
- Every other source, by repository (and folder): ``TUNE_SOURCES`` tune, anything else held back, so
  a source added later is never silently tuned on.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

LABELS_FILE = "labels.csv"
NUAA_SUBJECT = re.compile(r"(?:Client|Imposter)(?:Face|Raw)/(\d{4})/")
PERSON_ID = re.compile(r"--([0-9a-f]{8,})_")
NUAA_TUNE_SUBJECTS = frozenset({"0001", "0002", "0003", "0004"})
# whole sources on the tune side: a webcam set of screen replays and real crops, and a phone-spoof folder
TUNE_SOURCES = frozenset(
    {"Apfol/liveness-detection-opencv", "shreyas-kadlimatti/FaceLivenessDetection:17phonespoof"}
)
MAX_ROWS = 100_000  # a labels file is a list of files, not a data set: refuse absurd sizes


class Part(StrEnum):
    TUNE = "tune"
    HELD_BACK = "held_back"


@dataclass(frozen=True)
class Labelled:
    """One row of ``labels.csv``: the file (absolute), whether it is an attack, its species and source."""

    path: Path
    attack: bool
    species: str
    source: str  # the repository
    origin: str  # the file's path inside its repository (for the split's groups)


def read_labels(directory: Path) -> list[Labelled]:
    """The rows of ``directory/labels.csv``; ValueError on a row that is not a presentation of the folder."""
    rows: list[Labelled] = []
    with (directory / LABELS_FILE).open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            if number > MAX_ROWS:
                raise ValueError(f"{LABELS_FILE}: more than {MAX_ROWS} rows")
            label = (row.get("label") or "").strip()
            relative = (row.get("file") or "").strip()
            if label not in {"bona_fide", "attack"} or not relative:
                raise ValueError(f"{LABELS_FILE} line {number}: needs file and label bona_fide|attack")
            path = (directory / relative).resolve()
            if not path.is_relative_to(directory.resolve()):
                raise ValueError(f"{LABELS_FILE} line {number}: {relative} is outside {directory}")
            species = (row.get("species") or "").strip() or label
            rows.append(
                Labelled(
                    path,
                    label == "attack",
                    species,
                    (row.get("repo") or "").strip(),
                    (row.get("path") or relative).strip(),
                )
            )
    return rows


def group_of(row: Labelled) -> str:
    """The person or source a presentation belongs to: the unit the split never cuts through."""
    subject = NUAA_SUBJECT.search(row.origin)
    if subject:
        return f"nuaa:{subject.group(1)}"
    person = PERSON_ID.search(row.path.name)
    if person:
        return f"person:{person.group(1)}"
    if "17phonespoof" in row.origin:
        return f"{row.source}:17phonespoof"
    return row.source


def split(rows: Sequence[Labelled]) -> dict[Path, Part]:
    """Each presentation's part, by the rules in the module's docstring."""
    persons = sorted({group_of(row) for row in rows if group_of(row).startswith("person:")})
    person_part = {
        person: Part.TUNE if index % 2 == 0 else Part.HELD_BACK for index, person in enumerate(persons)
    }
    parts: dict[Path, Part] = {}
    for row in rows:
        group = group_of(row)
        if group.startswith("nuaa:"):
            parts[row.path] = (
                Part.TUNE if group.removeprefix("nuaa:") in NUAA_TUNE_SUBJECTS else Part.HELD_BACK
            )
        elif group in person_part:
            parts[row.path] = person_part[group]
        else:
            parts[row.path] = Part.TUNE if group in TUNE_SOURCES else Part.HELD_BACK
    return parts


def groups_by_part(rows: Iterable[Labelled]) -> dict[Part, set[str]]:
    """Which groups ended up on which side (a person or source on both would be a leak)."""
    rows = list(rows)
    parts = split(rows)
    found: dict[Part, set[str]] = {Part.TUNE: set(), Part.HELD_BACK: set()}
    for row in rows:
        found[parts[row.path]].add(group_of(row))
    return found
