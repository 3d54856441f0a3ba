"""The shipped model files: intact, Edge TPU-compatible when int8, and int8 close to float (no TensorFlow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.cli import main
from device.config import ModelsSection
from device.models.accelerator import open_model
from device.models.cpu_variant import CPU_VARIANT_CACHE
from device.models.edgetpu_compat import check_file, check_model
from device.models.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
REPO_MODELS = REPO / "models"
DETECTOR = "blazeface_full_range"


def shipped(variant: str) -> Path:
    return REPO_MODELS / load_manifest(REPO_MODELS).models[DETECTOR].files[variant].path  # type: ignore[index]


def test_models_verify_passes_on_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "--models-dir", str(REPO_MODELS)]) == 0
    out = capsys.readouterr().out
    assert f"{DETECTOR} int8: Edge TPU compatible" in out
    assert "all model files verified" in out


def test_models_verify_names_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO_MODELS, models)
    target = models / load_manifest(models).models[DETECTOR].files["int8"].path
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["models", "verify", "--models-dir", str(models)]) == 1
    err = capsys.readouterr().err
    assert f"{DETECTOR} (int8) {target}: sha256" in err
    assert "does not match the manifest" in err


def test_the_int8_detector_is_edge_tpu_compatible() -> None:
    report = check_file(shipped("int8"))
    assert report.ok, report.problems
    assert report.ops["CONV_2D"] > 40 and report.ops["QUANTIZE"] >= 1
    assert "DEQUANTIZE" not in report.ops  # folded away by the build


def test_the_float_detector_is_not(tmp_path: Path) -> None:
    report = check_file(shipped("float"))
    assert not report.ok
    assert any("'input' is FLOAT32, needs int8/uint8" in p for p in report.problems)


def _edited_int8(edit) -> bytes:  # type: ignore[no-untyped-def]
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(shipped("int8").read_bytes()))
    edit(model, schema)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_an_unsupported_op_is_reported_with_its_position(tmp_path: Path) -> None:
    def to_sin(model, schema) -> None:  # type: ignore[no-untyped-def]
        graph = model.subgraphs[0]
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.SIN
        code.version = 1
        model.operatorCodes.append(code)
        graph.operators[5].opcodeIndex = len(model.operatorCodes) - 1

    report = check_model(_edited_int8(to_sin), tmp_path / "x.tflite")
    assert report.problems == ["op 5 SIN: not on the Edge TPU supported-operations list"]


def test_dynamic_shapes_and_float_activations_are_reported(tmp_path: Path) -> None:
    def break_it(model, schema) -> None:  # type: ignore[no-untyped-def]
        graph = model.subgraphs[0]
        out = graph.tensors[graph.operators[10].outputs[0]]
        out.type = schema.TensorType.FLOAT32
        graph.tensors[graph.inputs[0]].shapeSignature = np.array([-1, 192, 192, 3], np.int32)

    report = check_model(_edited_int8(break_it), tmp_path / "x.tflite")
    assert any("dynamic shape [-1, 192, 192, 3]" in p for p in report.problems)
    assert any(p.startswith("op 10 ") and "is FLOAT32, needs int8/uint8" in p for p in report.problems)


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_models_eval_prints_int8_agreement_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "eval", "--json", "--only", "detector", "--models-dir", str(REPO_MODELS)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # Every float face in the fixture photos is found by int8 too, in nearly the same place.
    assert metrics["detector_faces_compared"] >= 25
    assert metrics["detector_faces_missed_by_int8"] == 0
    assert metrics["iou_int8_vs_float_mean"] >= 0.94
    assert metrics["score_diff_int8_vs_float_max"] <= 0.1
    assert metrics["keypoint_error_int8_pct_mean"] <= 2.5
    assert metrics["keypoint_error_int8_pct_mean_portraits"] <= 1.5
    for variant in ("float", "int8"):
        assert metrics[f"{DETECTOR}_latency_{variant}_ms"] > 0


def test_cpu_variant_is_measured_once_and_cached(tmp_path: Path) -> None:
    models = ModelsSection(dir=REPO_MODELS, accelerator="cpu", cpu_variant="auto")
    first = open_model(models, DETECTOR, state_dir=tmp_path)
    cache = json.loads((tmp_path / CPU_VARIANT_CACHE).read_text())
    assert cache[DETECTOR]["variant"] == first.variant
    assert cache[DETECTOR]["timing"]["float_ms"] > 0 and cache[DETECTOR]["timing"]["int8_ms"] > 0
    assert "margin" in first.health()["cpu_variant_reason"]
    second = open_model(models, DETECTOR, state_dir=tmp_path)
    assert second.variant == first.variant
    assert second.health()["cpu_variant_reason"] == f"kept from first start: {cache[DETECTOR]['reason']}"


def test_a_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / CPU_VARIANT_CACHE).write_text("{not json")
    model = open_model(ModelsSection(dir=REPO_MODELS, accelerator="cpu"), DETECTOR, state_dir=tmp_path)
    assert not model.health()["cpu_variant_reason"].startswith("kept from first start")
    assert json.loads((tmp_path / CPU_VARIANT_CACHE).read_text())[DETECTOR]["variant"] == model.variant


def test_int8_model_takes_float_input_and_gives_float_output(load_face) -> None:  # type: ignore[no-untyped-def]
    from device.vision.detect import letterbox

    tensor = letterbox(load_face("obama.jpg"), 192).tensor.astype(np.float32) / 127.5 - 1.0
    results = {}
    for variant in ("float", "int8"):
        model = open_model(ModelsSection(dir=REPO_MODELS, accelerator="cpu", cpu_variant=variant), DETECTOR)
        assert model.variant == variant
        results[variant] = {o.shape[-1]: o for o in model.run(tensor[None])}
    best = int(np.argmax(results["float"][1]))
    assert results["int8"][1].dtype == np.float32
    # The strongest anchor's logit and box agree to within a few int8 steps.
    assert abs(results["int8"][1].ravel()[best] - results["float"][1].ravel()[best]) < 0.5
    np.testing.assert_allclose(results["int8"][16][0, best, :4], results["float"][16][0, best, :4], atol=3.0)


def test_edgetpu_build_step_says_clearly_when_the_compiler_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "models" / "build" / "edgetpu.py")],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 1
    assert "edgetpu_compiler not found" in result.stderr
    assert "Coral's apt repository" in result.stderr


def test_pixels_fed_directly_give_what_the_float_path_gives(load_face) -> None:  # type: ignore[no-untyped-def]
    from device.vision.detect import letterbox

    pixels = letterbox(load_face("biden.jpg"), 192).tensor[None]
    model = open_model(ModelsSection(dir=REPO_MODELS, accelerator="cpu", cpu_variant="float"), DETECTOR)
    via_float = {o.shape[-1]: o for o in model.run(pixels.astype(np.float32) / 127.5 - 1.0)}
    direct = {o.shape[-1]: o for o in model.run_pixels(pixels, 127.5, 127.5)}
    for size in (1, 16):
        np.testing.assert_allclose(direct[size], via_float[size], atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        model.run_pixels(pixels.astype(np.float32), 127.5, 127.5)  # type: ignore[arg-type]


def test_pixels_for_the_int8_file_are_quantised_without_bias() -> None:
    from device.models.tensors import TensorSpec, pixel_preparer

    # The shipped int8 detector's input: real = (q - 127) / 127.5, while a pixel p means (p - 127.5) / 127.5,
    # so q should be p - 0.5: half the levels rounded down, half up, never more than one step off.
    spec = TensorSpec(0, (1, 16, 16, 1), np.dtype(np.uint8), 1 / 127.5, 127)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    prepared = pixel_preparer(127.5, 127.5)(pixels, spec)
    assert prepared.dtype == np.uint8
    offsets = prepared.astype(np.int16) - pixels.astype(np.int16)
    assert set(np.unique(offsets).tolist()) <= {-1, 0}
    assert abs(offsets.mean() + 0.5) < 0.01


@pytest.mark.parametrize(("dtype", "zero_point"), [(np.uint8, 127), (np.int8, -1), (np.int8, 3)])
def test_the_pixel_table_gives_exactly_what_quantising_the_float_would(dtype: type, zero_point: int) -> None:
    """The table lookup (OpenCV's, on a whole frame) is the float round trip's result, bit for bit."""
    from device.models.tensors import TensorSpec, pixel_preparer, quantize

    frame = np.random.default_rng(7).integers(0, 256, size=(1, 96, 64, 3), dtype=np.uint8)
    spec = TensorSpec(0, frame.shape, np.dtype(dtype), 1 / 127.5, zero_point)
    prepared = pixel_preparer(127.5, 127.5)(frame, spec)
    expected = quantize((frame.astype(np.float32) - np.float32(127.5)) * np.float32(1 / 127.5), spec)
    assert prepared.dtype == expected.dtype and prepared.shape == frame.shape
    np.testing.assert_array_equal(prepared, expected)


def test_verify_on_a_unit_without_the_schema_still_checks_sha256(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # tflite-runtime (the unit's apt runtime) ships no schema module: importing it fails.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.schema_py_generated", None)
    assert main(["models", "verify", "--models-dir", str(REPO_MODELS)]) == 0
    out = capsys.readouterr().out
    assert f"{DETECTOR} int8: sha256 ok" in out
    assert f"{DETECTOR} int8: Edge TPU check skipped: the Edge TPU check needs ai-edge-litert" in out


def test_the_shipped_float_detector_is_the_folded_build() -> None:
    """What models/build/blazeface.py makes of the wheel's file: no fp16 constants behind DEQUANTIZE,
    RELUs fused into their producers, and a serving_default signature with named outputs."""
    from ai_edge_litert.interpreter import Interpreter

    report = check_file(shipped("float"))
    assert "DEQUANTIZE" not in report.ops and "RELU" not in report.ops
    assert report.ops["CONV_2D"] == 49 and report.ops["DEPTHWISE_CONV_2D"] == 40
    assert not any("FLOAT16" in problem for problem in report.problems)
    signatures = Interpreter(model_path=str(shipped("float"))).get_signature_list()
    assert signatures == {"serving_default": {"inputs": ["input"], "outputs": ["classifiers", "regressors"]}}
