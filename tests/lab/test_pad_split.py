"""A labelled set of real captures is read row by row and split: no person or source on both sides."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from device.evaluation.pad_eval import Presentation, deciding_cues, labelled_presentations, report
from device.evaluation.pad_split import Part, groups_by_part, read_labels, split
from device.vision.liveness import CueResult, Liveness

HEADER = ["file", "label", "species", "repo", "commit", "path", "label_basis", "licence"]


def write_labels(directory: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    with (directory / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for file, label, species, repo, path in rows:
            writer.writerow([file, label, species, repo, "0" * 40, path, "test", "none"])


def test_nuaa_subjects_split_by_person_across_the_repositories_that_copy_them(tmp_path: Path) -> None:
    write_labels(tmp_path, [
        ("a/1.jpg", "bona_fide", "bona_fide", "one/copy", "data/ClientFace/0001/x.jpg"),
        ("a/2.jpg", "attack", "print", "other/copy", "data/ImposterRaw/0001/y.jpg"),
        ("a/3.jpg", "attack", "print", "one/copy", "data/ImposterFace/0007/z.jpg"),
        ("a/4.jpg", "bona_fide", "bona_fide", "other/copy", "data/ClientRaw/0007/w.jpg"),
    ])  # fmt: skip
    parts = {path.name: part for path, part in split(read_labels(tmp_path)).items()}
    assert parts == {"1.jpg": Part.TUNE, "2.jpg": Part.TUNE, "3.jpg": Part.HELD_BACK, "4.jpg": Part.HELD_BACK}


def test_a_persons_stills_and_clips_stay_together_and_unknown_sources_are_held_back(tmp_path: Path) -> None:
    rows = [
        (f"s/x--{person}_{n}.jpg", "bona_fide", kind, "selfies/set", f"p/{person}_{n}")
        for person in ("aaaaaaaa01", "bbbbbbbb02", "cccccccc03")
        for n, kind in ((1, "bona_fide"), (4, "bona_fide_clip"))
    ] + [("n/new.png", "attack", "screen", "someone/new", "fake/new.png")]
    write_labels(tmp_path, rows)
    labelled = read_labels(tmp_path)
    parts = {path.name: part for path, part in split(labelled).items()}
    assert parts["x--aaaaaaaa01_1.jpg"] == parts["x--aaaaaaaa01_4.jpg"] == Part.TUNE
    assert parts["x--bbbbbbbb02_1.jpg"] == parts["x--bbbbbbbb02_4.jpg"] == Part.HELD_BACK
    assert parts["x--cccccccc03_1.jpg"] == Part.TUNE and parts["new.png"] == Part.HELD_BACK
    groups = groups_by_part(labelled)
    assert not groups[Part.TUNE] & groups[Part.HELD_BACK]


@pytest.mark.parametrize(
    ("file", "label", "problem"),
    [("a.jpg", "maybe", "label"), ("../outside.jpg", "attack", "outside"), ("", "attack", "label")],
)
def test_a_malformed_row_is_refused(tmp_path: Path, file: str, label: str, problem: str) -> None:
    write_labels(tmp_path, [(file, label, "print", "r/r", "p")])
    with pytest.raises(ValueError, match=problem):
        read_labels(tmp_path)


def test_a_species_name_cannot_turn_an_attack_into_bona_fide(tmp_path: Path) -> None:
    write_labels(tmp_path, [
        ("a.jpg", "attack", "bona_fide_lookalike", "r/r", "p/a"),
        ("b.jpg", "bona_fide", "print", "r/r", "p/b"),
    ])  # fmt: skip
    species = {path.name: name for name, path, _, _ in labelled_presentations(tmp_path)}
    assert species == {"a.jpg": "attack", "b.jpg": "bona_fide"}


def cues(**scores: tuple[float | None, bool | None]) -> dict[str, CueResult]:
    return {name: CueResult(score, passed) for name, (score, passed) in scores.items()}


def test_each_error_names_the_cues_that_decided_it_and_figures_come_per_source() -> None:
    rejected = Liveness(False, 0.1, cues(texture=(0.9, True), spectrum=(0.1, False)))
    missed = Liveness(True, 0.6, cues(texture=(0.6, True), frame_edges=(1.0, True)))
    unseen = Liveness(None, None, cues(texture=(None, None)))
    caught = Liveness(False, 0.0, cues(texture=(0.0, False)))
    results = [
        Presentation(Path("bf.jpg"), "bona_fide", rejected, "repo/a"),
        Presentation(Path("clip.mp4"), "bona_fide_clip", missed, "repo/a"),
        Presentation(Path("p.jpg"), "print", missed, "repo/b"),
        Presentation(Path("s.jpg"), "screen", unseen, "repo/b"),
        Presentation(Path("s2.jpg"), "screen", caught, "repo/a"),
    ]
    document = report(results)
    assert deciding_cues(rejected) == ["spectrum"]
    assert deciding_cues(missed) == ["none rejected", "weakest texture 0.600"]
    assert deciding_cues(unseen) == ["all abstained"]
    assert [(e["file"], e["decided_by"][0]) for e in document["errors"]] == [
        ("bf.jpg", "spectrum"), ("p.jpg", "none rejected"), ("s.jpg", "all abstained"),
    ]  # fmt: skip
    assert document["bpcer"]["presentations"] == 2 and document["bpcer"]["errors"] == 1
    assert set(document["bpcer_species"]) == {"bona_fide", "bona_fide_clip"}
    assert document["sources"]["repo/a"]["screen"]["apcer"] == 0.0
    assert document["sources"]["repo/b"]["screen"]["apcer"] == 1.0
