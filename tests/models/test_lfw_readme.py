"""The README's LFW verification table, measured again on ../shared/lfw (both CPU files, colour and grey).

Slow (every picture of folds 5-7 through the still-picture path four times, a few minutes on two cores);
``make test`` runs it. Figures may move by a pair or two between machines (floating-point order in the
interpreter), hence the tolerances; the faces found must be exactly the same.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from embedder_support import MODELS_DIR, REPO_ROOT

from device.evaluation.lfw import lfw_metrics

SHARED_LFW = REPO_ROOT.parent / "shared" / "lfw"
README = REPO_ROOT / "README.md"
MODES = {
    "colour": "colour",
    "grey": "grey",
    "colour vs grey": "cross",
    "colour, mirror averaging": "colour_mirror",
}
# One pair moves the mean accuracy by 0.06 points and TAR by 0.11 (900 genuine pairs): two pairs' worth.
ACCURACY_TOLERANCE = 0.0012
TAR_TOLERANCE = 0.0023

pytestmark = pytest.mark.slow


def readme_rows() -> dict[tuple[str, str], dict[str, float]]:
    """(CPU file, mode) -> figures, from the table under "Recognition on LFW"."""
    section = README.read_text().split("### Recognition on LFW", 1)[1].split("\n#", 1)[0]
    rows = {}
    pattern = re.compile(
        r"^\| (float|int8) \| (colour|grey|colour vs grey|colour, mirror averaging) \| "
        r"([\d.]+) % \| ([\d.]+) % \| ([\d.]+) % \| (\d+) \|",
        re.MULTILINE,
    )
    for cpu_file, mode, accuracy, tar3, tar2, missing in pattern.findall(section):
        rows[(cpu_file, MODES[mode])] = {
            "mean_accuracy": float(accuracy) / 100,
            "tar_at_far_0.001": float(tar3) / 100,
            "tar_at_far_0.01": float(tar2) / 100,
            "images_without_face": float(missing),
        }
    return rows


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    if not (SHARED_LFW / "pairs.csv").is_file():
        pytest.skip(f"{SHARED_LFW} is absent (LFW folds 5-7 are not part of the project)")
    return lfw_metrics(MODELS_DIR, SHARED_LFW)


def test_the_readme_table_is_what_the_shipped_settings_measure(measured: dict[str, Any]) -> None:
    rows = readme_rows()
    assert len(rows) == 8
    for (cpu_file, mode), claimed in rows.items():
        figures = measured[cpu_file][mode]
        assert figures["images_without_face"] == claimed["images_without_face"], (cpu_file, mode)
        accuracy_moved = abs(figures["mean_accuracy"] - claimed["mean_accuracy"])
        assert accuracy_moved <= ACCURACY_TOLERANCE, (cpu_file, mode)
        for key in ("tar_at_far_0.001", "tar_at_far_0.01"):
            assert abs(figures[key] - claimed[key]) <= TAR_TOLERANCE, (cpu_file, mode, key)


def test_every_colour_picture_has_its_face_and_grey_stays_close_to_colour(measured: dict[str, Any]) -> None:
    for cpu_file in ("float", "int8"):
        figures = measured[cpu_file]
        assert figures["colour"]["images_without_face"] <= 1
        assert figures["colour"]["mean_accuracy"] - figures["grey"]["mean_accuracy"] <= 0.005
