"""Rebuild the MiniFASNet presentation-attack CNNs (V2 and V1SE) as float and full-integer int8 TFLite.

Run by `make models-pad` with the build venv (.venv-build: TensorFlow + onnx, x86-64 hosts only):

    .venv-build/bin/python models/build/minifasnet.py

Source: the ONNX exports of the two Apache-2.0 weight files vendored in models/minifasnet/source/
(see models/minifasnet/README.md for their origin and sha256). No PyTorch: the ONNX graph is read with
``onnx`` and translated node by node into TensorFlow ops (this project's own translation, for the few
node types these two graphs use), then converted:

1. NCHW -> NHWC weights; convolutions with PyTorch's symmetric padding become an explicit PAD + VALID
   convolution where TF's SAME would pad asymmetrically (stride 2), SAME where it is identical;
2. the head (Flatten -> MatMul -> BatchNormalization -> MatMul, no non-linearity between) is folded
   into one fully connected layer: exact up to float rounding, and one quantised tensor fewer;
3. float file: TFLiteConverter on a concrete function with a static 1x80x80x3 input (raw BGR 0..255);
4. int8 file: full-integer post-training quantisation (uint8 input with scale 1 so the pixels go in
   unchanged, int8 inside with per-channel weights, uint8 logits out), calibrated on seeded augmented
   crops of the registry fixture faces at the model's own crop scale (never web images);
5. both files and the model's manifest entry (metrics measured on the unit's runtime, ai-edge-litert).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildkit import build_arguments, log_progress, quantise_full_int8  # noqa: E402  (path set just above)

log = logging.getLogger("models.build.minifasnet")

SOURCE_DIR = REPO / "models" / "minifasnet" / "source"
INPUT_SIZE = 80
SEED = 20261202
CROPS_PER_FACE = 40
SCALE_JITTER = (0.85, 1.2)  # of the crop scale: BlazeFace boxes vary by detector and pose
CENTRE_JITTER = 0.08  # of the face box side
GAIN = (0.6, 1.35)
MAX_OFFSET = 25.0


@dataclass(frozen=True)
class Spec:
    name: str
    onnx_file: str
    onnx_sha256: str
    pth_file: str
    pth_sha256: str
    reference_scale: float


SPECS = (
    Spec(
        name="minifasnet_v2",
        onnx_file="MiniFASNetV2.onnx",
        onnx_sha256="4eed38f0bde33c9b805942a5f25e42ce1161e2bda545254be622be957727794e",
        pth_file="2.7_80x80_MiniFASNetV2.pth",
        pth_sha256="a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
        reference_scale=2.7,
    ),
    Spec(
        name="minifasnet_v1se",
        onnx_file="MiniFASNetV1SE.onnx",
        onnx_sha256="d819a69bac6b9ade2a0f4d9b60b618e1260f7bf3ba1fddff6c5d82131cb1083f",
        pth_file="4_0_0_80x80_MiniFASNetV1SE.pth",
        pth_sha256="84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
        reference_scale=4.0,
    ),
)
SWEEP_FACTORS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
UPSTREAM_COMMIT = "b6d5f04ad78778917853b25c778acef6d5626d15"
EXPORT_COMMIT = "c175efef505bc275f7835cc9aa2aecab305ac184"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(spec: Spec) -> bytes:
    data = (SOURCE_DIR / spec.onnx_file).read_bytes()
    if sha256(data) != spec.onnx_sha256:
        raise SystemExit(f"{spec.onnx_file}: sha256 {sha256(data)} is not the pinned {spec.onnx_sha256}")
    return data


def attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def translate(onnx_bytes: bytes) -> Callable[[Any], Any]:
    """The ONNX graph as a TensorFlow function of an NHWC float32 batch -> logits (N, 3)."""
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer}
    nodes = list(graph.node)
    head = fold_head(nodes, weights)
    body = nodes[: head.first_index]
    (input_name,) = [i.name for i in graph.input if i.name not in weights]

    steps: list[Callable[[dict[str, Any]], None]] = []
    for node in body:
        steps.append(translate_node(node, weights, tf))

    kernel = tf.constant(head.kernel)
    bias = tf.constant(head.bias)

    def run(batch: Any) -> Any:
        values: dict[str, Any] = {input_name: batch}
        for step in steps:
            step(values)
        features = tf.reshape(values[head.input_name], (-1, head.kernel.shape[0]))
        return tf.matmul(features, kernel) + bias

    return run


@dataclass(frozen=True)
class Head:
    first_index: int
    input_name: str
    kernel: np.ndarray
    bias: np.ndarray


def fold_head(nodes: list[Any], weights: dict[str, np.ndarray]) -> Head:
    """Flatten -> MatMul(W1) -> BatchNorm -> MatMul(W2) becomes x @ K + b (no non-linearity in between)."""
    kinds = [node.op_type for node in nodes[-4:]]
    if kinds != ["Flatten", "MatMul", "BatchNormalization", "MatMul"]:
        raise SystemExit(f"unexpected head {kinds}: the translation knows Flatten, MatMul, BN, MatMul")
    flatten, first, norm, second = nodes[-4:]
    w1 = weights[first.input[1]]
    gamma, beta, mean, var = (weights[name] for name in norm.input[1:5])
    scale = gamma / np.sqrt(var + np.float32(attributes(norm).get("epsilon", 1e-5)))
    w2 = weights[second.input[1]]
    kernel = ((w1 * scale[None, :]).astype(np.float64) @ w2.astype(np.float64)).astype(np.float32)
    bias = ((beta - mean * scale).astype(np.float64) @ w2.astype(np.float64)).astype(np.float32)
    return Head(len(nodes) - 4, flatten.input[0], kernel, bias)


def translate_node(node: Any, weights: dict[str, np.ndarray], tf: Any) -> Callable[[dict[str, Any]], None]:
    kind = node.op_type
    out = node.output[0]
    if kind == "Conv":
        return conv_step(node, weights, tf)
    if kind == "PRelu":
        # (C, 1, 1) slopes -> (1, 1, C) over NHWC. relu(x) + relu(-x) * (-a) with a rank-3 slope is the
        # form the converter fuses into one PRELU op (with a rank-1 slope it stays NEG, RELU, MUL, ADD).
        negated_alpha = tf.constant(-weights[node.input[1]].reshape(1, 1, -1))
        source = node.input[0]

        def prelu(values: dict[str, Any]) -> None:
            x = values[source]
            values[out] = tf.nn.relu(x) + tf.nn.relu(-x) * negated_alpha

        return prelu
    if kind in ("Add", "Mul"):
        left, right = node.input[0], node.input[1]
        op = tf.add if kind == "Add" else tf.multiply

        def binary(values: dict[str, Any]) -> None:
            values[out] = op(values[left], values[right])

        return binary
    if kind == "GlobalAveragePool":
        source = node.input[0]

        def pool(values: dict[str, Any]) -> None:
            values[out] = tf.reduce_mean(values[source], axis=[1, 2], keepdims=True)

        return pool
    if kind in ("Relu", "Sigmoid"):
        source = node.input[0]
        fn = tf.nn.relu if kind == "Relu" else tf.math.sigmoid

        def unary(values: dict[str, Any]) -> None:
            values[out] = fn(values[source])

        return unary
    raise SystemExit(f"ONNX node {kind} ({node.name}) is not part of this translation")


def conv_step(node: Any, weights: dict[str, np.ndarray], tf: Any) -> Callable[[dict[str, Any]], None]:
    attrs = attributes(node)
    weight = weights[node.input[1]]  # (out, in / group, kh, kw)
    bias = tf.constant(weights[node.input[2]]) if len(node.input) > 2 else None
    group = int(attrs.get("group", 1))
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))  # top, left, bottom, right
    if list(attrs.get("dilations", [1, 1])) != [1, 1]:
        raise SystemExit(f"{node.name}: dilated convolutions are not part of this translation")
    kh, kw = weight.shape[2:]
    depthwise = group > 1 and group == weight.shape[0] and weight.shape[1] == 1
    if group > 1 and not depthwise:
        raise SystemExit(f"{node.name}: grouped (non-depthwise) convolutions are not part of this translation")
    if depthwise:
        kernel = tf.constant(np.transpose(weight, (2, 3, 0, 1)))  # (kh, kw, C, 1)
    else:
        kernel = tf.constant(np.transpose(weight, (2, 3, 1, 0)))  # (kh, kw, in, out)
    same = strides == [1, 1] and pads == [kh // 2, kw // 2, kh // 2, kw // 2] and kh % 2 == 1
    explicit = None if same or not any(pads) else [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    padding = "SAME" if same else "VALID"
    source, out = node.input[0], node.output[0]
    stride4 = [1, strides[0], strides[1], 1]

    def conv(values: dict[str, Any]) -> None:
        x = values[source]
        if explicit is not None:
            x = tf.pad(x, explicit)
        if depthwise:
            y = tf.nn.depthwise_conv2d(x, kernel, stride4, padding)
        else:
            y = tf.nn.conv2d(x, kernel, stride4, padding)
        values[out] = y if bias is None else tf.nn.bias_add(y, bias)

    return conv


def concrete_function(onnx_bytes: bytes) -> Any:
    import tensorflow as tf

    run = translate(onnx_bytes)
    signature = [tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="input")]

    @tf.function(input_signature=signature)
    def serve(batch: Any) -> dict[str, Any]:
        return {"logits": run(batch)}

    return serve.get_concrete_function()


def convert(onnx_bytes: bytes, samples: list[np.ndarray] | None) -> bytes:
    import tensorflow as tf

    function = concrete_function(onnx_bytes)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], function)
    if samples is not None:

        def dataset() -> Iterator[list[np.ndarray]]:
            for sample in samples:
                yield [sample]

        quantise_full_int8(converter, dataset)
    return bytes(converter.convert())


def onnx_reference(onnx_bytes: bytes, batch_nchw: np.ndarray) -> np.ndarray:
    """The ONNX graph evaluated directly in numpy-free TF eager (NCHW in), to check the translation."""
    import tensorflow as tf

    run = translate(onnx_bytes)
    return np.asarray(run(tf.constant(np.transpose(batch_nchw, (0, 2, 3, 1)))))


def calibration_crops(scale: float) -> list[np.ndarray]:
    """Seeded crops of the fixture faces at ``scale`` x the BlazeFace box, jittered, flipped and re-lit."""
    import cv2

    from device.evaluation import fixtures
    from device.config import UnitConfig
    from device.vision.faces import load_stages
    from device.vision.pad_texture import crop_box

    config = UnitConfig.model_validate({"models": {"dir": str(REPO / "models"), "accelerator": "cpu",
                                                   "cpu_variant": "float"}})  # fmt: skip
    detector = load_stages(config).detector
    rng = np.random.default_rng(SEED)
    images = [fixtures.load_rgb(name) for name in fixtures.FACE_IMAGES]
    images.append(fixtures.astronaut_rgb())
    samples = []
    for image in images:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        height, width = image.shape[:2]
        for detection in detector.detect(image):
            box = detection.box
            for _ in range(CROPS_PER_FACE):
                side = max(box.width, box.height)
                dx, dy = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2) * side
                jittered = type(box)(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy)
                x0, y0, x1, y1 = crop_box(jittered, width, height, scale * rng.uniform(*SCALE_JITTER))
                crop = cv2.resize(bgr[y0:y1, x0:x1], (INPUT_SIZE, INPUT_SIZE))
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                gain = rng.uniform(*GAIN)
                offset = rng.uniform(-MAX_OFFSET, MAX_OFFSET)
                crop = np.clip(crop.astype(np.float32) * gain + offset, 0, 255)
                samples.append(crop[None].astype(np.float32))
    # The input's full 0..255 range, so the uint8 input keeps scale 1 (pixels go in unchanged).
    samples.append(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32))
    samples.append(np.full((1, INPUT_SIZE, INPUT_SIZE, 3), 255.0, np.float32))
    log.info("calibration set: %d crops at scale %.2f from %d images", len(samples), scale, len(images))
    return samples


def blazeface_scale(name: str) -> float:
    from device.vision.pad_texture import crop_scale_for

    return crop_scale_for(name)


def crop_scale_fit(models_dir: Path) -> dict[str, Any]:
    """The crop-scale sweep behind BLAZEFACE_CROP_SCALE, summarised for the manifest."""
    from device.evaluation.pad_models import crop_scale_sweep
    from device.vision.pad_texture import BLAZEFACE_CROP_FACTOR

    result = crop_scale_sweep(models_dir, SWEEP_FACTORS)
    summary = {
        factor: {
            "scales": entry["scales"],
            "jittered_bona_fide_below_0.5": entry["jittered_bona_fide_below_0.5"],
            "jittered_bona_fide_p_real_p10": entry["jittered_bona_fide_p_real_p10"],
            "jittered_attack_p_real_max": entry["jittered_attack_p_real_max"],
            "unjittered_bona_fide_below_0.5": entry["fused"]["bona_fide_below_threshold"],
        }
        for factor, entry in result["sweep"].items()
    }
    return {
        "chosen_factor": BLAZEFACE_CROP_FACTOR,
        "faces": result["faces"],
        "attack_samples": result["attacks"],
        "method": "device.evaluation.pad_models.crop_scale_sweep: fused float P(real) with both models at "
        "factor x reference scale on BlazeFace boxes; each face's box plus 7 copies jittered by up to 6% "
        "per edge; the print/screen samples are 640x480 so their crops are clamped from factor ~0.9 up",
        "by_factor": summary,
    }


def quantisation_of(int8_model: bytes) -> dict[str, list[float]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=int8_model)
    details = interpreter.get_input_details() + interpreter.get_output_details()
    return {d["name"]: [float(d["quantization"][0]), int(d["quantization"][1])] for d in details}


def manifest_entry(spec: Spec, float_model: bytes, int8_model: bytes, metrics: dict[str, Any]) -> dict[str, Any]:
    base = f"minifasnet/{spec.name}"
    return {
        "role": "pad_texture",
        "files": {
            "float": {"path": f"{base}_float.tflite", "sha256": sha256(float_model), "bytes": len(float_model)},
            "int8": {
                "path": f"{base}_int8.tflite",
                "sha256": sha256(int8_model),
                "bytes": len(int8_model),
                "note": "uint8 input (scale 1: raw pixels) and uint8 logits, int8 inside (per-channel "
                "weights); Edge TPU compiler input",
                "quantisation_scale_zero_point": quantisation_of(int8_model),
            },
            "edgetpu": {"path": f"{base}_int8_edgetpu.tflite", "sha256": None, "note": "make edgetpu-models"},
        },
        "input": {
            "shape": [1, INPUT_SIZE, INPUT_SIZE, 3],
            "dtype": "float32 (float file); uint8 (int8 file)",
            "normalisation": "BGR, raw pixel values 0..255 (no mean, no scaling), NHWC",
            "crop": "face box scaled about its centre (scale reduced to fit the image, then shifted "
            "inside it), resized to 80x80; device/vision/pad_texture.py",
            "reference_crop_scale": spec.reference_scale,
            "crop_scale_blazeface": round(blazeface_scale(spec.name), 4),
        },
        "outputs": [
            {
                "name": "logits",
                "shape": [1, 3],
                "meaning": "3 class logits; softmax; class 1 = bona fide (real), classes 0 and 2 = attacks",
            }
        ],
        "source": {
            "weights": f"models/minifasnet/source/{spec.pth_file}",
            "weights_sha256": spec.pth_sha256,
            "upstream": f"GitHub minivision-ai/Silent-Face-Anti-Spoofing commit {UPSTREAM_COMMIT}, "
            "resources/anti_spoof_models/",
            "onnx": f"models/minifasnet/source/{spec.onnx_file}",
            "onnx_sha256": spec.onnx_sha256,
            "onnx_export": f"GitHub yakhyo/face-anti-spoofing commit {EXPORT_COMMIT}, weights/ (Apache-2.0)",
            "version": UPSTREAM_COMMIT,
            "training_data": "not disclosed by the authors (a provenance limitation): the error rates on "
            "this unit's own attacks are unknown until measured with device pad-eval",
        },
        "licence": "Apache-2.0 (models/minifasnet/LICENSE)",
        "recipe": "models/build/minifasnet.py (make models-pad): ONNX read with onnx, translated to TF ops "
        "(NHWC, explicit PAD for stride-2 convs, head folded into one FC), TFLiteConverter float and "
        "full-integer int8 PTQ calibrated on seeded augmented fixture face crops at the model's scale",
        "metrics": metrics,
    }


def update_manifest(models_dir: Path, name: str, entry: dict[str, Any]) -> None:
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    old_entry = manifest["models"].get(name, {})
    previous = old_entry.get("files", {}).get("edgetpu")
    int8_sha = entry["files"]["int8"]["sha256"]
    if previous and previous.get("sha256") and previous.get("from_int8_sha256") == int8_sha:
        entry["files"]["edgetpu"] = previous
    if not entry["metrics"] and old_entry.get("metrics"):
        entry["metrics"] = old_entry["metrics"]  # --no-metrics: keep the last measured figures
    manifest["models"][name] = entry
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> int:
    parser = build_arguments(__doc__.splitlines()[0])
    parser.add_argument("--float-only", action="store_true", help="skip int8 and metrics")
    parser.add_argument("--no-metrics", action="store_true", help="skip measuring (faster rebuild check)")
    args = parser.parse_args()
    log_progress()

    target = args.models_dir / "minifasnet"
    target.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        source = read_source(spec)
        float_model = convert(source, None)
        (target / f"{spec.name}_float.tflite").write_bytes(float_model)
        log.info("%s float %d bytes sha256 %s", spec.name, len(float_model), sha256(float_model))
        if args.float_only:
            int8_model = b""
        else:
            int8_model = convert(source, calibration_crops(blazeface_scale(spec.name)))
            (target / f"{spec.name}_int8.tflite").write_bytes(int8_model)
            log.info("%s int8 %d bytes sha256 %s", spec.name, len(int8_model), sha256(int8_model))
        if int8_model:
            update_manifest(args.models_dir, spec.name, manifest_entry(spec, float_model, int8_model, {}))
    if not args.float_only and not args.no_metrics:
        from device.evaluation.pad_models import pad_model_metrics

        fit = crop_scale_fit(args.models_dir)
        for spec in SPECS:
            metrics = pad_model_metrics(args.models_dir, spec.name)
            metrics["crop_scale_fit_blazeface"] = fit
            float_model = (target / f"{spec.name}_float.tflite").read_bytes()
            int8_model = (target / f"{spec.name}_int8.tflite").read_bytes()
            update_manifest(args.models_dir, spec.name, manifest_entry(spec, float_model, int8_model, metrics))
            log.info("%s metrics %s", spec.name, json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
