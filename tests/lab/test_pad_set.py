"""The generated attack set is reproducible and laid out for `device pad-eval`; PAD's bench figures exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pipeline_support import embeddings_of, unit_config

from device.evaluation import fixtures
from device.evaluation.pad_eval import presentations_in
from device.identity.match import InMemoryGallery
from device.lab import padattacks
from device.lab.bench import decoded_frames
from device.lab.democlip import demo_walks, make_clip
from device.lab.padattacks import (
    DRAWS_PER_STILL,
    HOLDOUT_PHOTOS,
    SPECIES_ADDED_LATER,
    SPECIES_CLIP,
    SPECIES_STILL,
    TUNE_PHOTOS,
    write_attack_set,
)
from device.lab.padbench import pad_benchmark
from device.vision.faces import FaceAnalyzer, Stages
from device.vision.liveness import open_liveness


def test_the_tune_and_holdout_splits_share_no_subject() -> None:
    assert not set(TUNE_PHOTOS) & set(HOLDOUT_PHOTOS)


@pytest.mark.slow
def test_the_set_is_reproducible_and_in_the_pad_eval_layout(stages: Stages, tmp_path: Path) -> None:
    photos = [("biden.jpg", fixtures.load_rgb("biden.jpg"))]
    first, second = tmp_path / "a", tmp_path / "b"
    count = write_attack_set(first, "holdout", photos, stages.detector.detect)
    write_attack_set(second, "holdout", photos, stages.detector.detect)
    assert count == 3 + len(SPECIES_STILL) * DRAWS_PER_STILL + len(SPECIES_CLIP)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert len(files) == count
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    species = {kind for kind, _ in presentations_in(first)}
    assert species == {"bona_fide", *SPECIES_STILL, *SPECIES_CLIP}


@pytest.mark.slow
def test_a_species_added_later_leaves_the_earlier_renders_as_they_were(
    stages: Stages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures the settings were chosen on stay reproducible: the set without the later species is
    the same files, byte for byte (two subjects, so that draws carried from one to the next count too)."""
    photos = [(name, fixtures.load_rgb(name)) for name in ("biden.jpg", "obama3.jpg")]
    write_attack_set(tmp_path / "now", "holdout", photos, stages.detector.detect)
    earlier = tuple(species for species in SPECIES_CLIP if species not in SPECIES_ADDED_LATER)
    monkeypatch.setattr(padattacks, "SPECIES_CLIP", earlier)
    count = write_attack_set(tmp_path / "before", "holdout", photos, stages.detector.detect)
    files = sorted(path.relative_to(tmp_path / "before") for path in (tmp_path / "before").rglob("*.*"))
    assert len(files) == count > 0
    for relative in files:
        assert (tmp_path / "now" / relative).read_bytes() == (tmp_path / "before" / relative).read_bytes()


@pytest.mark.slow
def test_bench_reports_pad_cpu_per_visit_and_the_added_delay(stages: Stages, tmp_path: Path) -> None:
    config = unit_config()
    analyzer = FaceAnalyzer.from_stages(stages)
    gallery = InMemoryGallery()
    gallery.enrol("resident", embeddings_of(analyzer, "obama2.jpg", "obama3.jpg"))
    walks = demo_walks(fixtures.load_rgb("obama.jpg"), fixtures.load_rgb("biden.jpg"))
    clip = make_clip(tmp_path / "clip.avi", walks, analyzer.detector.detect)
    stage = open_liveness(config)
    assert stage is not None
    result = pad_benchmark(config, stages, decoded_frames(clip.path), gallery, stage, repeats=1)
    assert result["pad_visits"] == 2
    assert result["pad_decisions_on_clip"] == ["recognized", "unknown"]
    assert np.isfinite(result["pad_cpu_ms_per_visit"]) and result["pad_cpu_ms_per_visit"] > 0
    assert result["pad_added_delay_s"] is not None and result["pad_added_delay_met"] is not None
