"""The PAD figures the README gives for the generated holdout split: `device pad-eval` measures no worse
(the same presentations, no more errors; a better PAD does not fail it, a worse one does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from figures_support import worse_cells
from pipeline_support import REPO, shipped_stages, unit_config

from device.evaluation import fixtures
from device.evaluation.pad_eval import evaluate, report
from device.lab.padattacks import HOLDOUT_PHOTOS, write_attack_set
from device.vision.liveness import open_liveness

COLUMNS = ("bpcer", "print", "screen", "cutout", "print_clip", "screen_clip", "cutout_clip")


def readme_row(variant: str) -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^\| {variant} \| (.+) \|$", text, re.MULTILINE)
    assert match, f"README has no PAD holdout row for {variant}"
    cells = [cell.strip() for cell in match.group(1).split("|")]
    return dict(zip(COLUMNS, cells, strict=True))


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pad") / "holdout"
    photos = [(name, fixtures.load_rgb(name)) for name in HOLDOUT_PHOTOS]
    write_attack_set(root, "holdout", photos, shipped_stages().detector.detect)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float", "int8"])
def test_the_readme_holdout_table_is_what_pad_eval_measures(holdout: Path, variant: str) -> None:
    config = unit_config(models={"cpu_variant": variant})
    stage = open_liveness(config)
    assert stage is not None
    document = report(
        evaluate(holdout, shipped_stages(config).detector, stage, config.quality, config.matching.max_samples)
    )
    measured = {"bpcer": f"{document['bpcer']['errors']}/{document['bpcer']['presentations']}"}
    for species, part in document["apcer"].items():
        measured[species] = f"{part['errors']}/{part['presentations']}"
    assert worse_cells(measured, readme_row(variant)) == []
