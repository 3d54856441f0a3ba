"""Will the Edge TPU compiler map this .tflite file? A check on the file itself, without the compiler.

Reads the flatbuffer with the schema that ships inside ai-edge-litert (no TensorFlow) and applies the
rules of Coral's model requirements: every operator on the supported list (with its known limits),
8-bit tensors everywhere between the input QUANTIZE and the output DEQUANTIZE, static shapes, and no
tensor with more than three dimensions larger than one. A file that passes can still be partly mapped by
the compiler (it decides per op, e.g. for big bilinear resizes), but one that fails would not run fully
on the TPU.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import UserError

# Coral's supported-operations table for the Edge TPU compiler (TFLite builtin names).
EDGETPU_SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MIRROR_PAD",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
# Ops the compiler maps only without a fused activation.
NO_FUSED_ACTIVATION = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"})
EIGHT_BIT = frozenset({"INT8", "UINT8"})
# Constant operands that are not activations: biases (int32) and shape/size/padding operands.
CONSTANT_TYPES = EIGHT_BIT | {"INT32"}
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
SCHEMA_MODULE = "ai_edge_litert.schema_py_generated"


class CompatError(UserError):
    """The file cannot be read as a TFLite model."""


class SchemaUnavailableError(CompatError):
    """No TFLite schema to read the file with (a unit with tflite-runtime only): the check cannot run."""


@dataclass
class CompatReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    compiled: bool = False  # already contains the Edge TPU custom op

    @property
    def ok(self) -> bool:
        return not self.problems


def _schema() -> Any:
    try:
        schema_py_generated = importlib.import_module(SCHEMA_MODULE)
    except ImportError as error:
        raise SchemaUnavailableError(
            "the Edge TPU check needs ai-edge-litert (it ships the TFLite schema)"
        ) from error
    return schema_py_generated


def _names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if isinstance(value, int)}


def check_file(path: Path) -> CompatReport:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CompatError(f"cannot read {path}: {error.strerror}") from None
    return check_model(data, path)


def check_model(data: bytes, path: Path) -> CompatReport:
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as error:  # the generated parser raises anything from struct.error to IndexError
        raise CompatError(f"{path} is not a TFLite flatbuffer: {error}") from None
    op_names = _names(schema.BuiltinOperator)
    type_names = _names(schema.TensorType)
    activation_names = _names(schema.ActivationFunctionType)
    report = CompatReport(path)

    if len(model.subgraphs or []) != 1:
        report.problems.append(
            f"{len(model.subgraphs or [])} subgraphs; the Edge TPU compiler needs exactly 1"
        )
        if not model.subgraphs:
            return report
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    graph_inputs = {int(i) for i in graph.inputs}
    graph_outputs = {int(i) for i in graph.outputs}

    def tensor_label(index: int) -> str:
        name = tensors[index].name
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)

    def is_constant(index: int) -> bool:
        buffer_index = tensors[index].buffer
        if not buffer_index:
            return False
        buffer = model.buffers[buffer_index]
        return (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))

    for position, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
            if custom == EDGETPU_CUSTOM_OP:
                report.compiled = True
        report.ops[name] += 1
        where = f"op {position} {name}"
        inputs = [int(i) for i in op.inputs if i >= 0]
        outputs = [int(i) for i in op.outputs]

        if name == "DEQUANTIZE":
            if not set(outputs) <= graph_outputs:
                report.problems.append(f"{where}: DEQUANTIZE inside the graph (only allowed at the outputs)")
            continue
        if name == "QUANTIZE" and set(inputs) <= graph_inputs:
            continue  # float or uint8 model input -> 8-bit: the boundary the compiler expects
        if name == f"CUSTOM:{EDGETPU_CUSTOM_OP}":
            continue
        if name not in EDGETPU_SUPPORTED_OPS:
            report.problems.append(f"{where}: not on the Edge TPU supported-operations list")
        options = op.builtinOptions
        fused = getattr(options, "fusedActivationFunction", 0) if options is not None else 0
        if name in NO_FUSED_ACTIVATION and fused:
            report.problems.append(
                f"{where}: fused activation {activation_names.get(fused, fused)} is not supported here"
            )
        for index in inputs + outputs:
            type_name = type_names.get(int(tensors[index].type), str(tensors[index].type))
            allowed = CONSTANT_TYPES if is_constant(index) else EIGHT_BIT
            if type_name not in allowed:
                kind = "constant" if is_constant(index) else "activation"
                report.problems.append(
                    f"{where}: {kind} tensor {tensor_label(index)!r} is {type_name}, needs int8/uint8"
                )

    for index, tensor in enumerate(tensors):
        shape = [int(n) for n in (tensor.shape if tensor.shape is not None else [])]
        signature = tensor.shapeSignature
        if signature is not None and any(int(n) < 0 for n in signature):
            dims = [int(n) for n in signature]
            report.problems.append(f"tensor {tensor_label(index)!r}: dynamic shape {dims}")
        if sum(1 for n in shape if n > 1) > 3 and not is_constant(index):
            report.problems.append(
                f"tensor {tensor_label(index)!r}: shape {shape} has more than 3 dimensions larger than 1"
            )
    return report
