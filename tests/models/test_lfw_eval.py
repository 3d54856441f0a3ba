"""``device models eval --lfw DIR``: the LFW protocol's arithmetic on scores made up by hand, and the
command on a small folder laid out like ../shared/lfw (fixture photos and one face-free picture)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from embedder_support import MODELS_DIR

from device.cli import main
from device.evaluation import fixtures
from device.evaluation.lfw import LfwLayoutError, read_pairs
from device.evaluation.verification import NO_FACE, best_threshold, protocol, tar_at_far
from device.lab.democlip import hallway


def test_tar_at_far_lets_through_no_more_impostors_than_asked() -> None:
    impostors = np.linspace(0.0, 0.6, 300)  # the highest three: 0.6, 0.598, 0.596
    genuine = np.array([0.59, 0.597, 0.599, 0.61, 0.7])
    scores = np.concatenate([impostors, genuine])
    same = np.concatenate([np.zeros(300, bool), np.ones(5, bool)])
    # 1e-3 of 300 impostors is none: only genuine pairs above the highest impostor count
    assert tar_at_far(scores, same, 1e-3) == pytest.approx(2 / 5)
    # 1e-2 is three: above the fourth highest impostor
    assert tar_at_far(scores, same, 1e-2) == pytest.approx(4 / 5)


def test_the_threshold_of_a_fold_comes_from_the_other_folds() -> None:
    # Folds 1 and 2 separate at 0.5; fold 3's scores sit higher, so its own best threshold would be 0.8
    # and give it 100 %. Judged by the others' threshold, its impostors at 0.7 pass: 50 %.
    scores = np.array([0.6, 0.4, 0.6, 0.4, 0.9, 0.7])
    same = np.array([True, False, True, False, True, False])
    folds = np.array([1, 1, 2, 2, 3, 3])
    figures = protocol(scores, same, folds)
    by_fold = {fold.fold: fold for fold in figures.folds}
    assert 0.4 < by_fold[3].threshold < 0.6
    assert by_fold[3].accuracy == 0.5
    assert by_fold[1].accuracy == by_fold[2].accuracy == 1.0
    assert figures.mean_accuracy == pytest.approx(2.5 / 3)
    assert figures.best_accuracy == pytest.approx(5 / 6)


def test_a_pair_without_a_face_is_a_rejection() -> None:
    scores = np.array([0.9, NO_FACE, 0.2, 0.3])
    same = np.array([True, True, False, False])
    threshold = best_threshold(scores, same)
    assert threshold > NO_FACE
    assert tar_at_far(scores, same, 1e-2) == 0.5


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Obama x3 and Biden as three folds of one genuine and two impostor pairs, one picture with no face."""
    root = tmp_path_factory.mktemp("lfw")
    (root / "images").mkdir()
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        (root / "images" / name).write_bytes(fixtures.fixture_path(name).read_bytes())
    cv2.imwrite(str(root / "images" / "hall.png"), hallway(640, 480)[:, :, ::-1])
    rows = [
        "1,images/obama.jpg,images/obama2.jpg,1",
        "1,images/obama.jpg,images/biden.jpg,0",
        "1,images/obama.jpg,images/hall.png,0",
        "2,images/obama2.jpg,images/obama3.jpg,1",
        "2,images/obama2.jpg,images/biden.jpg,0",
        "2,images/biden.jpg,images/hall.png,0",
        "3,images/obama.jpg,images/obama3.jpg,1",
        "3,images/obama3.jpg,images/biden.jpg,0",
        "3,images/obama3.jpg,images/hall.png,0",
    ]
    (root / "pairs.csv").write_text("fold,a,b,same\n" + "\n".join(rows) + "\n")
    return root


def test_eval_lfw_reports_each_fold_and_the_whole(
    small_lfw: Path, face_images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "eval", "--lfw", str(small_lfw), "--cpu-file", "float", "--models-dir", str(MODELS_DIR)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["lfw"]
    assert (report["pairs"], report["images"]) == (9, 5)
    assert set(report) == {"pairs", "images", "float"}
    colour = report["float"]["colour"]
    assert [fold["fold"] for fold in colour["folds"]] == [1, 2, 3]
    assert colour["mean_accuracy"] == 1.0 and colour["tar_at_far_0.001"] == 1.0
    assert colour["images_without_face"] == 1  # the empty hall
    assert colour["ms_per_image"] > 0
    assert set(report["float"]) == {"colour", "grey", "cross", "colour_mirror"}
    assert report["float"]["colour_mirror"]["mean_accuracy"] == 1.0
    assert report["float"]["colour_mirror"]["ms_per_image"] is None  # its extra inference is not timed
    assert report["float"]["grey"]["images_without_face"] == 1
    assert report["float"]["cross"]["images_without_face"] == 2  # the hall once in colour, once in grey

    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["float", "colour", "overall"] for line in table)
    assert sum(1 for line in table if line.split()[:2] == ["float", "grey"]) == 4  # three folds, overall


def test_eval_lfw_refuses_a_folder_not_laid_out_like_lfw(
    tmp_path: Path, small_lfw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "eval", "--lfw", str(tmp_path), "--models-dir", str(MODELS_DIR)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pairs.csv" in error[0]
    (tmp_path / "pairs.csv").write_text("fold,a,b,same\n1,../outside.jpg,images/x.jpg,1\n")
    with pytest.raises(LfwLayoutError, match="not a picture inside"):
        read_pairs(tmp_path)
    assert len(read_pairs(small_lfw)) == 9
