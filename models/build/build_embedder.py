"""Builds models/dlib_resnet_v1/*.tflite (float and full-integer int8) from dlib's packaged weights.

Run in the build venv (.venv-build, `make models`); needs tensorflow-cpu, dlib-bin and
face_recognition_models==0.3.0. Steps:

1. read the weights from ``dlib_face_recognition_resnet_model_v1.dat`` (checked against its pinned sha256)
   with ``dlib_resnet.py`` — no dlib involved;
2. fold what is exact to fold: each affine layer into the convolution before it, and the input
   normalisation ((pixel - mean) / 256) into the first convolution (it has no padding, so every output
   sees only real pixels). The model then takes raw RGB pixels 0..255, which an int8 model's uint8 input
   represents exactly (scale 1, zero point 0);
3. express the graph in TensorFlow ops the Edge TPU supports (CONV_2D, ADD, MAX/AVERAGE_POOL_2D, PAD,
   MEAN, FULLY_CONNECTED), save a SavedModel with a ``serving_default`` signature, convert to float TFLite;
4. quantise to full integer (uint8 input/output, int8 inside) with TensorFlow's calibrator on augmented
   dlib face chips of the fixture photos;
5. check the float file against the numpy reference and print a short report (JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from buildkit import quantise_full_int8  # noqa: E402
from dlib_resnet import (
    CHIP_SIZE,
    INPUT_DIVISOR,
    Affine,
    Conv,
    DlibResnet,
    load_dlib_resnet,
    reference_descriptors,
)

log = logging.getLogger("build_embedder")

MODEL_NAME = "dlib_resnet_v1"
WEIGHTS_PACKAGE = "face_recognition_models"
WEIGHTS_VERSION = "0.3.0"
WEIGHTS_MEMBER = "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"
WEIGHTS_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / MODEL_NAME
CALIBRATION_SEED = 20260
CALIBRATION_VARIANTS = 24  # augmented chips per detected fixture face


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_file(name: str) -> Path:
    """A file in face_recognition_models/models, found without importing the package (its __init__
    needs pkg_resources, which the setuptools TensorFlow pulls in no longer has)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} is not installed in this venv")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


def weights_path() -> Path:
    path = package_file(Path(WEIGHTS_MEMBER).name)
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {WEIGHTS_SHA256} ({WEIGHTS_PACKAGE} changed?)")
    return path


# ------------------------------------------------------------------------------------------ folding


def fold_affine(conv: Conv, affine: Affine) -> Conv:
    scale = affine.gamma.astype(np.float64)
    weights = conv.weights.astype(np.float64) * scale[:, None, None, None]
    bias = conv.bias.astype(np.float64) * scale + affine.beta
    return Conv(weights.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)


def fold_input_normalisation(conv: Conv, mean_rgb: tuple[float, float, float]) -> Conv:
    if conv.padding:
        raise ValueError("input normalisation can only be folded into an unpadded convolution")
    weights = conv.weights.astype(np.float64) / INPUT_DIVISOR
    mean = np.asarray(mean_rgb, dtype=np.float64)
    bias = conv.bias.astype(np.float64) - np.einsum("ochw,c->o", weights, mean)
    return Conv(weights.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)


# ------------------------------------------------------------------------------------- tensorflow


def build_module(net: DlibResnet):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    stem = fold_input_normalisation(fold_affine(net.stem_conv, net.stem_affine), net.mean_rgb)
    units = [
        (fold_affine(u.conv_a, u.affine_a), fold_affine(u.conv_b, u.affine_b), u.shortcut_pool)
        for u in net.units
    ]

    def conv2d(x, conv: Conv, relu: bool):  # type: ignore[no-untyped-def]
        kernel = tf.constant(np.transpose(conv.weights, (2, 3, 1, 0)))  # HWIO
        if conv.padding:
            # dlib pads symmetrically; for 3x3 stride 1 with padding 1 that is exactly "SAME".
            assert conv.stride == 1 and conv.padding == conv.weights.shape[2] // 2
            padding = "SAME"
        else:
            padding = "VALID"
        y = tf.nn.conv2d(x, kernel, strides=conv.stride, padding=padding)
        y = tf.nn.bias_add(y, tf.constant(conv.bias))
        return tf.nn.relu(y) if relu else y

    def average_pool_as_depthwise(x, size: int, stride: int):  # type: ignore[no-untyped-def]
        # The same average as AVERAGE_POOL_2D, but as a depthwise convolution with weights 1/size**2:
        # XNNPACK runs int8 depthwise convolutions, not int8 average pools, and every op it cannot take
        # splits the graph into slower pieces. 1/4 is exact in per-channel int8 (scale 0.25/127, q=127).
        channels = x.shape[3]
        kernel = tf.constant(np.full((size, size, channels, 1), 1.0 / size**2, dtype=np.float32))
        return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="VALID")

    def forward(x):  # type: ignore[no-untyped-def]
        x = conv2d(x, stem, relu=True)
        pool = net.stem_pool
        x = tf.nn.max_pool2d(x, pool.size, pool.stride, "VALID")
        for conv_a, conv_b, shortcut_pool in units:
            y = conv2d(conv2d(x, conv_a, relu=True), conv_b, relu=False)
            shortcut = x
            if shortcut_pool is not None:
                shortcut = average_pool_as_depthwise(x, shortcut_pool.size, shortcut_pool.stride)
            # dlib adds tensors of different sizes by zero-extending the smaller one: extra channels on
            # the pooled shortcut, one extra row/column at the bottom/right of the strided conv output.
            y_hw, s_hw = y.shape[1], shortcut.shape[1]
            if y_hw < s_hw:
                y = tf.pad(y, [[0, 0], [0, s_hw - y_hw], [0, s_hw - y_hw], [0, 0]])
            extra = y.shape[3] - shortcut.shape[3]
            if extra:
                shortcut = tf.pad(shortcut, [[0, 0], [0, 0], [0, 0], [0, extra]])
            x = tf.nn.relu(y + shortcut)
        pooled = tf.reduce_mean(x, axis=[1, 2])
        return tf.matmul(pooled, tf.constant(net.fc))

    class Embedder(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([1, CHIP_SIZE, CHIP_SIZE, 3], tf.float32, name="chip")])
        def serve(self, chip):  # type: ignore[no-untyped-def]
            return {"descriptor": forward(chip)}

    return Embedder()


def convert(saved_model: Path, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for chip in calibration:
                yield [chip[None].astype(np.float32)]

        quantise_full_int8(converter, representative)
    return bytes(converter.convert())


# ------------------------------------------------------------------------------------ calibration


def dlib_chips(names: list[str]) -> list[np.ndarray]:
    """dlib's own 150x150 chips (get_face_chip, padding 0.25) of every face dlib finds in the images."""
    import dlib

    from device.evaluation import fixtures

    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(package_file("shape_predictor_5_face_landmarks.dat")))
    chips: list[np.ndarray] = []
    for name in names:
        image = fixtures.load_rgb(name)
        for rect in detector(image, 1):
            chips.append(
                np.asarray(dlib.get_face_chip(image, shapes(image, rect), size=CHIP_SIZE, padding=0.25))
            )
    return chips


def augment(chips: list[np.ndarray], variants: int, seed: int) -> np.ndarray:
    """Flips, small rotations/shifts/scales and brightness/contrast changes: what alignment noise and
    lighting do to real chips. Seeded, so a rebuild calibrates on the same data."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for chip in chips:
        out.append(chip.astype(np.float32))
        for _ in range(variants - 1):
            angle = rng.uniform(-8, 8)
            scale = rng.uniform(0.93, 1.07)
            matrix = cv2.getRotationMatrix2D((CHIP_SIZE / 2, CHIP_SIZE / 2), angle, scale)
            matrix[:, 2] += rng.uniform(-4, 4, size=2)
            warped = cv2.warpAffine(chip, matrix, (CHIP_SIZE, CHIP_SIZE), borderMode=cv2.BORDER_REFLECT)
            if rng.random() < 0.5:
                warped = warped[:, ::-1]
            gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
            out.append(np.clip(warped.astype(np.float32) * gain + offset, 0, 255).round())
    return np.stack(out).astype(np.float32)


# -------------------------------------------------------------------------------------------- main


def run_tflite(model: bytes, chips: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=model, num_threads=2)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for chip in chips:
        x = chip[None].astype(np.float32)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), 0, 255).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        results.append(y[0])
    return np.stack(results)


def record_in_manifest(models_dir: Path, digests: dict[str, str]) -> None:
    """Writes the new files' sha256 into this model's manifest entry (and nothing else): the unit refuses
    a file whose sha256 differs from the manifest."""
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = manifest["models"][MODEL_NAME]["files"]
    for variant, digest in digests.items():
        files[variant]["sha256"] = digest
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="elsewhere: the manifest is left alone")
    parser.add_argument("--float-only", action="store_true", help="skip the int8 quantisation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import tensorflow as tf

    tf.keras.utils.set_random_seed(CALIBRATION_SEED)
    path = weights_path()
    net = load_dlib_resnet(path)
    log.info("read %s: %d residual units", path.name, len(net.units))
    module = build_module(net)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"weights_sha256": WEIGHTS_SHA256}

    chips = dlib_chips(
        ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"] + [f"sample{i}.jpg" for i in range(1, 7)]
    )
    log.info("%d dlib chips from the fixtures", len(chips))
    clean = np.stack(chips)
    reference = reference_descriptors(net, clean)

    with tempfile.TemporaryDirectory(prefix="embedder-build-") as tmp:
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        float_model = convert(saved, None)
        (args.out / f"{MODEL_NAME}_float.tflite").write_bytes(float_model)
        float_out = run_tflite(float_model, clean.astype(np.float32))
        float_cos = cosines(float_out, reference)
        report["float_vs_reference_cosine_min"] = float(float_cos.min())
        report["float_sha256"] = hashlib.sha256(float_model).hexdigest()
        if float_cos.min() < 0.9999:
            raise SystemExit(f"float TFLite disagrees with the numpy reference: min cosine {float_cos.min()}")
        if not args.float_only:
            calibration = augment(chips, CALIBRATION_VARIANTS, CALIBRATION_SEED)
            log.info("calibrating int8 on %d augmented chips", len(calibration))
            int8_model = convert(saved, calibration)
            (args.out / f"{MODEL_NAME}_int8.tflite").write_bytes(int8_model)
            int8_cos = cosines(run_tflite(int8_model, clean.astype(np.float32)), float_out)
            report["int8_vs_float_cosine_mean"] = float(int8_cos.mean())
            report["int8_vs_float_cosine_min"] = float(int8_cos.min())
            report["int8_sha256"] = hashlib.sha256(int8_model).hexdigest()
    if args.out.resolve() == DEFAULT_OUT.resolve():
        digests = {"float": str(report["float_sha256"])}
        if "int8_sha256" in report:
            digests["int8"] = str(report["int8_sha256"])
        record_in_manifest(DEFAULT_OUT.parent, digests)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
