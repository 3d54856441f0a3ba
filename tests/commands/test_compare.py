"""``device compare`` on the fixture photos: same person matches, different people do not."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_support import MODELS

from device.cli import main
from device.config import UnitConfig
from device.lab.democlip import hallway


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "unit.toml"
    path.write_text(f'[models]\ndir = "{MODELS}"\naccelerator = "cpu"\n')
    return path


def compare_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, object]]]:
    code = main(["compare", *args, "--json"])
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


@pytest.mark.parametrize("variant", ["float", "int8"])
def test_obama_matches_obama2_and_obama3_but_not_biden_at_the_default_threshold(
    variant: str, face_images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both CPU files of both models: the unit picks whichever is faster on its CPU, or the Edge TPU file
    # (compiled from the int8 one), and the threshold must hold for all of them.
    config_file = tmp_path / "unit.toml"
    config_file.write_text(f'[models]\ndir = "{MODELS}"\naccelerator = "cpu"\ncpu_variant = "{variant}"\n')
    pairs = tmp_path / "pairs.csv"
    rows = [("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"), ("obama.jpg", "biden.jpg")]
    pairs.write_text("a,b\n" + "".join(f"{face_images[a]},{face_images[b]}\n" for a, b in rows))
    code, results = compare_json(capsys, "--pairs", str(pairs), "--config", str(config_file))
    assert code == 0
    assert [set(result) for result in results] == [{"a", "b", "similarity", "match"}] * 3
    assert [result["match"] for result in results] == [True, True, False]
    threshold = UnitConfig().matching.threshold
    same = [float(result["similarity"]) for result in results[:2]]  # type: ignore[arg-type]
    other = float(results[2]["similarity"])  # type: ignore[arg-type]
    assert min(same) >= threshold > other


@pytest.mark.slow
def test_two_images_on_the_command_line_give_one_result_and_text_output_says_match(
    face_images: dict[str, Path], config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = str(face_images["obama2.jpg"]), str(face_images["obama3.jpg"])
    code, results = compare_json(capsys, a, b, "--config", str(config_file))
    assert code == 0 and len(results) == 1
    assert results[0]["a"] == a and results[0]["b"] == b and results[0]["match"] is True
    assert main(["--config", str(config_file), "compare", a, b]) == 0
    text = capsys.readouterr().out
    assert "similarity 0." in text and text.strip().endswith("match") and "no match" not in text


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_a_picture_without_a_face_gives_similarity_null(
    face_images: dict[str, Path], config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "hallway.png"
    cv2.imwrite(str(empty), np.ascontiguousarray(hallway(640, 480)[:, :, ::-1]))
    portrait = str(face_images["obama.jpg"])
    code, results = compare_json(capsys, portrait, str(empty), "--config", str(config_file))
    assert code == 0
    assert results == [
        {"a": str(face_images["obama.jpg"]), "b": str(empty), "similarity": None, "match": False}
    ]


@pytest.mark.slow
def test_pairs_paths_are_relative_to_the_csv_and_a_missing_picture_is_reported(
    face_images: dict[str, Path], config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "one.jpg").write_bytes(face_images["obama.jpg"].read_bytes())
    (folder / "two.jpg").write_bytes(face_images["obama2.jpg"].read_bytes())
    pairs = folder / "pairs.csv"
    pairs.write_text("a,b\none.jpg,two.jpg\none.jpg,gone.jpg\n")
    code = main(["compare", "--pairs", str(pairs), "--json", "--config", str(config_file)])
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert results[0]["match"] is True
    assert results[1] == {"a": "one.jpg", "b": "gone.jpg", "similarity": None, "match": False}
    assert "gone.jpg" in captured.err and "Traceback" not in captured.err


@pytest.mark.slow
def test_a_same_column_adds_a_verification_summary(
    face_images: dict[str, Path], config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        ("obama.jpg", "obama2.jpg", 1),
        ("obama.jpg", "obama3.jpg", 1),
        ("obama2.jpg", "obama3.jpg", 1),
        ("obama.jpg", "biden.jpg", 0),
        ("obama2.jpg", "biden.jpg", 0),
        ("obama3.jpg", "sample1.jpg", 0),
    ]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b,same\n" + "".join(f"{face_images[a]},{face_images[b]},{s}\n" for a, b, s in rows))
    code, results = compare_json(capsys, "--pairs", str(pairs), "--config", str(config_file))
    assert code == 0 and len(results) == len(rows) + 1
    assert [result["same"] for result in results[:-1]] == [bool(s) for _, _, s in rows]
    summary = results[-1]["summary"]
    assert isinstance(summary, dict)
    assert (summary["genuine_pairs"], summary["impostor_pairs"], summary["pairs_without_face"]) == (3, 3, 0)
    # Every Obama pair is closer than any pair of different people on these photos.
    assert summary["tar_at_far_1e-2"] == summary["tar_at_far_1e-3"] == 1.0
    assert summary["best_accuracy"] == 1.0 and summary["accuracy_at_threshold"] == 1.0
    assert main(["compare", "--pairs", str(pairs), "--config", str(config_file)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("summary: ") and "tar_at_far_1e-3 1.0" in last


@pytest.mark.slow
def test_pairs_without_a_same_column_print_no_summary(
    face_images: dict[str, Path], config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"a,b\n{face_images['obama.jpg']},{face_images['biden.jpg']}\n")
    code, results = compare_json(capsys, "--pairs", str(pairs), "--config", str(config_file))
    assert code == 0 and len(results) == 1 and "summary" not in results[0] and "same" not in results[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("x,y\na.jpg,b.jpg\n", "header a,b"),
        ("a,b\nonly-one.jpg\n", ":2: expected two image paths"),
        ("a,b,same\na.jpg,b.jpg,yes\n", ":2: same must be 1 or 0"),
        ("a,b,same\na.jpg,b.jpg\n", ":2: expected two image paths and same"),
    ],
)
def test_a_malformed_pairs_file_is_a_usage_error(
    content: str, problem: str, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(content)
    assert main(["compare", "--pairs", str(pairs), "--config", str(config_file)]) == 2
    assert problem in capsys.readouterr().err


def test_compare_needs_two_images_or_a_pairs_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "only-one.jpg"]) == 2
    assert "usage: device compare" in capsys.readouterr().err
