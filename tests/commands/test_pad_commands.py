"""`device identify --json` gives every face its liveness; `device pad-eval` reports ISO/IEC 30107-3 rates."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import pytest
from gallery_helpers import Unit, init_unit

from device.cli import main
from device.evaluation import fixtures
from device.evaluation.pad_eval import Presentation, report
from device.lab.padattacks import RenderParams, still_attack
from device.vision.faces import FaceAnalyzer
from device.vision.liveness import CueResult, Liveness

REPO = Path(__file__).resolve().parents[2]
PAD_SAMPLES = REPO / "tests" / "data" / "pad_samples"
PRINT = RenderParams(
    halftone_period=4, paper_white=240.0, border=0.1, tilt=0.05, gradient=0.2, gamma=1.0, glare=0.1, jpeg=85
)


def device(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Unit:
    unit = init_unit(tmp_path_factory.mktemp("pad-unit"))
    photos = [str(fixtures.fixture_path(name)) for name in ("obama.jpg", "obama2.jpg")]
    code, _, err = device(
        unit.config_path, "enroll", "--name", "Resident", "--images", *photos, "--consent-ref", "F-1"
    )
    assert code == 0, err
    return unit


@pytest.mark.slow
def test_identify_reports_liveness_and_does_not_recognise_a_print(unit: Unit, tmp_path: Path) -> None:
    photo = fixtures.load_rgb("obama3.jpg")
    face = FaceAnalyzer.from_config(unit.config).largest(photo)
    assert face is not None
    printed = tmp_path / "print.png"
    cv2.imwrite(str(printed), still_attack(photo, face.detection.box, "print", PRINT)[:, :, ::-1])
    code, out, err = device(
        unit.config_path, "identify", "--json", str(fixtures.fixture_path("obama3.jpg")), str(printed)
    )
    assert code == 0, err
    real, attack = (image["faces"][0] for image in json.loads(out)["images"])
    assert real["subject_id"].startswith("s-") and real["liveness"]["passed"] is True
    assert set(real["liveness"]) == {"passed", "score", "cues"}
    assert set(real["liveness"]["cues"]) == {"texture", "frame_edges", "spectrum"}  # a still's cues
    assert attack["subject_id"] == "unknown" and attack["liveness"]["passed"] is False
    assert any(reason.startswith("pad_") for reason in attack["reasons"])


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_pad_eval_over_the_public_samples(unit: Unit, tmp_path: Path) -> None:
    for part, name in (
        ("bona_fide", "image_T1.jpg"),
        ("attack/print", "image_F1.jpg"),
        ("attack/screen", "image_F2.jpg"),
    ):
        (tmp_path / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(PAD_SAMPLES / name, tmp_path / part / name)
    (tmp_path / "bona_fide" / "notes.txt").write_text("not a presentation")
    code, out, err = device(unit.config_path, "pad-eval", str(tmp_path), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["standard"] == "ISO/IEC 30107-3"
    assert document["bpcer"] == {
        "bpcer": 0.0, "errors": 0, "presentations": 1, "upper_95": 1.0,
        "failures_to_acquire": 0, "error_files": [],
    }  # fmt: skip
    assert document["apcer"]["print"]["apcer"] == 0.0 and document["apcer"]["screen"]["presentations"] == 1
    assert document["worst_apcer"]["species"] in {"print", "screen"}


def test_pad_eval_over_a_labelled_set_reports_the_tune_and_held_back_parts_per_source(
    unit: Unit, tmp_path: Path
) -> None:
    rows = [
        ("real/T1.jpg", "bona_fide", "bona_fide", "Apfol/liveness-detection-opencv", "image_T1.jpg"),
        ("fake/F1.jpg", "attack", "print", "Apfol/liveness-detection-opencv", "image_F1.jpg"),
        ("fake/F2.jpg", "attack", "screen", "elsewhere/screens", "image_F2.jpg"),
    ]
    lines = ["file,label,species,repo,commit,path,label_basis,licence"]
    for file, label, species, repo, name in rows:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PAD_SAMPLES / name, tmp_path / file)
        lines.append(f"{file},{label},{species},{repo},{'0' * 40},{name},test,none")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    code, out, err = device(unit.config_path, "pad-eval", str(tmp_path), "--json")
    assert code == 0, err
    document = json.loads(out)
    tune, held = document["tune"], document["held_back"]
    assert tune["bpcer"]["presentations"] == 1 and tune["apcer"]["print"]["presentations"] == 1
    assert held["apcer"]["screen"]["presentations"] == 1 and held["bpcer"]["presentations"] == 0
    assert set(document["all"]["sources"]) == {"Apfol/liveness-detection-opencv", "elsewhere/screens"}
    assert document["all"]["errors"] == []  # the samples: T1 passes, F1 and F2 fail
    code, text, err = device(unit.config_path, "pad-eval", str(tmp_path))
    assert code == 0 and "== held back ==" in text and "source elsewhere/screens:" in text, err
    (tmp_path / "labels.csv").write_text("file,label\n../escape.jpg,attack\n")
    code, _, err = device(unit.config_path, "pad-eval", str(tmp_path))
    assert code != 0 and "outside" in err


def test_pad_eval_refuses_a_folder_without_the_layout(unit: Unit, tmp_path: Path) -> None:
    code, _, err = device(unit.config_path, "pad-eval", str(tmp_path))
    assert code != 0 and "bona_fide" in err


def verdict(passed: bool | None) -> Liveness:
    return Liveness(passed, None, {"texture": CueResult(None, passed)})


def test_rates_counts_worst_species_and_rule_of_three() -> None:
    results = [
        *(Presentation(Path(f"bf{i}.png"), "bona_fide", verdict(True)) for i in range(19)),
        Presentation(Path("bf_rejected.png"), "bona_fide", verdict(False)),
        Presentation(Path("bf_abstained.png"), "bona_fide", verdict(None)),  # abstain = let through
        *(Presentation(Path(f"p{i}.png"), "print", verdict(False)) for i in range(30)),
        *(Presentation(Path(f"s{i}.png"), "screen", verdict(False)) for i in range(8)),
        *(Presentation(Path(f"s_ok{i}.png"), "screen", verdict(True)) for i in range(2)),
        Presentation(Path("no_face.png"), "screen", None),
    ]
    document = report(results)
    assert document["bpcer"]["bpcer"] == round(1 / 21, 4) and document["bpcer"]["error_files"] == [
        "bf_rejected.png"
    ]
    assert document["apcer"]["print"] == {
        "apcer": 0.0, "errors": 0, "presentations": 30, "upper_95": 0.1,
        "failures_to_acquire": 0, "error_files": [],
    }  # fmt: skip
    screen = document["apcer"]["screen"]
    assert (screen["apcer"], screen["presentations"], screen["failures_to_acquire"]) == (0.2, 10, 1)
    assert screen["upper_95"] is None  # errors were seen: the observed rate is the estimate
    assert document["worst_apcer"]["species"] == "screen" and document["worst_apcer"]["apcer"] == 0.2
