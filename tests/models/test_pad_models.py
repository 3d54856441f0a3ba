"""The shipped PAD models: manifest entries, vendored sources, Edge TPU rules and `device models eval`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from device.cli import main
from device.models.edgetpu_compat import check_file
from device.models.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
REPO_MODELS = REPO / "models"
TEXTURE_MODELS = ("minifasnet_v2", "minifasnet_v1se")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", TEXTURE_MODELS)
def test_texture_model_entries_state_source_licence_and_provenance(name: str) -> None:
    entry = load_manifest(REPO_MODELS).models[name]
    extra = entry.model_dump()
    assert entry.role == "pad_texture"
    assert extra["licence"].startswith("Apache-2.0")
    assert "not disclosed" in extra["source"]["training_data"]
    assert "b6d5f04ad78778917853b25c778acef6d5626d15" in extra["source"]["upstream"]
    # The vendored source files are the pinned ones (a swapped weight file would change the build).
    for kind in ("weights", "onnx"):
        assert sha256(REPO / extra["source"][kind]) == extra["source"][f"{kind}_sha256"]
    assert "Apache License" in (REPO_MODELS / "minifasnet" / "LICENSE").read_text()
    metrics = entry.metrics
    same_side, compared = metrics[f"{name}_p_real_int8_float_same_side_of_0.5"].split("/")
    assert same_side == compared
    assert metrics[f"{name}_latency_int8_ms_1_thread"] > 0


@pytest.mark.parametrize("name", TEXTURE_MODELS)
def test_int8_texture_files_pass_the_edge_tpu_rules(name: str) -> None:
    entry = load_manifest(REPO_MODELS).models[name]
    report = check_file(REPO_MODELS / entry.files["int8"].path)
    assert report.ok, report.problems
    assert report.ops["PRELU"] == 33  # PReLU stays one op (not NEG/RELU/MUL/ADD, which split the graph)


@pytest.mark.slow
def test_models_eval_reports_pad_int8_vs_float_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "eval", "--json", "--only", "pad", "--models-dir", str(REPO_MODELS)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for name in TEXTURE_MODELS:
        assert metrics[f"{name}_faces_compared"] >= 28
        # measured: at most 0.05 (V2) and 0.13 (V1SE) apart (mean 0.003 / 0.010), every face on the
        # same side of 0.5
        assert metrics[f"{name}_p_real_int8_vs_float_abs_diff_max"] < 0.2
        assert metrics[f"{name}_p_real_int8_vs_float_abs_diff_mean"] < 0.03
        compared = metrics[f"{name}_p_real_int8_float_same_side_of_0.5"]
        assert compared.split("/")[0] == compared.split("/")[1]
        samples = metrics[f"{name}_p_real_on_samples"]
        for variant in ("float", "int8"):
            assert samples["image_F1"][variant] < 0.5 and samples["image_F2"][variant] < 0.5
            assert samples["image_T1"][variant] > 0.5
    assert metrics["face_landmark_faces"] >= 25
    assert metrics["face_landmark_vs_blazeface_keypoints_portraits_max_of_box"] < 0.05
    assert metrics["face_landmark_presence_min"] > 0.5
    assert metrics["face_landmark_latency_float_ms_1_thread"] > 0
