"""Reads dlib's face-descriptor network (``dlib_face_recognition_resnet_model_v1.dat``) without dlib.

The file is dlib's own serialisation of the trained ``anet_type`` network. What matters here:

- integers are written as one length byte (low nibble = byte count, bit 0x80 = negative) followed by that
  many little-endian magnitude bytes; strings are an integer length followed by the characters;
- a scalar float is a pair of integers (64-bit mantissa, 16-bit exponent): value = mantissa * 2**exponent;
- a tensor is: version (2), num_samples, k, nr, nc, then num_samples*k*nr*nc raw little-endian float32;
- an alias tensor (a view into a layer's flat parameter tensor) is: version (1), num_samples, k, nr, nc;
- every layer starts with its type name (``con_4``, ``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``,
  ``add_prev_``, ``fc_2``, ``input_rgb_image_sized``); layers are written input first.

Tag/skip layers and the training state around each layer carry no name and no weights, so the reader walks
from one layer name to the next, decodes the fields of the layers that have any, and then checks the whole
sequence against the residual-network grammar (see ``parse_units``). Any surprise raises ``DatFormatError``.

The module also has a plain numpy forward pass: the reference the TFLite export and the tests compare with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
# The input layer divides (pixel - mean) by this (dlib's input_rgb_image).
INPUT_DIVISOR = 256.0

LAYER_NAMES = (
    b"input_rgb_image_sized",
    b"con_4",
    b"affine_",
    b"relu_",
    b"max_pool_2",
    b"avg_pool_2",
    b"add_prev_",
    b"fc_2",
    b"loss_metric_2",
)


class DatFormatError(ValueError):
    """The .dat file is not the network this reader understands."""


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise DatFormatError("unexpected end of file")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def integer(self) -> int:
        head = self.byte()
        size = head & 0x0F
        if size == 0 or size > 8:
            raise DatFormatError(f"bad integer length byte 0x{head:02x} at {self.pos - 1}")
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        value = int.from_bytes(raw, "little")
        return -value if head & 0x80 else value

    def scalar(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0**exponent

    def string(self) -> bytes:
        length = self.integer()
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw

    def tensor(self) -> FloatArray:
        version = self.integer()
        if version != 2:
            raise DatFormatError(f"tensor version {version} at {self.pos}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise DatFormatError("tensor runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos = end
        return values.astype(np.float32).reshape(shape)

    def alias_shape(self) -> tuple[int, int, int, int]:
        version = self.integer()
        if version != 1:
            raise DatFormatError(f"alias tensor version {version} at {self.pos}, expected 1")
        n, k, nr, nc = (self.integer() for _ in range(4))
        return n, k, nr, nc


@dataclass(frozen=True)
class Conv:
    """A convolution: weights (out, in, kh, kw) as cross-correlation, plus bias (out,)."""

    weights: FloatArray
    bias: FloatArray
    stride: int
    padding: int


@dataclass(frozen=True)
class Affine:
    """Per-channel scale and shift (dlib's inference-time batch norm)."""

    gamma: FloatArray
    beta: FloatArray


@dataclass(frozen=True)
class Pool:
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Layer:
    name: str
    offset: int
    conv: Conv | None = None
    affine: Affine | None = None
    pool: Pool | None = None
    fc: FloatArray | None = None
    mean_rgb: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ResidualUnit:
    """relu(block(x) + shortcut(x)); block = affine(conv(relu(affine(conv(x))))), first conv strided."""

    conv_a: Conv
    affine_a: Affine
    conv_b: Conv
    affine_b: Affine
    # Down-sampling units average-pool the shortcut (2x2, stride 2) and widen it with zero channels.
    shortcut_pool: Pool | None


@dataclass(frozen=True)
class DlibResnet:
    mean_rgb: tuple[float, float, float]
    stem_conv: Conv
    stem_affine: Affine
    stem_pool: Pool
    units: list[ResidualUnit]
    fc: FloatArray  # (256, 128): descriptor = pooled @ fc
    layer_names: list[str] = field(default_factory=list)


def _find_layers(data: bytes) -> list[int]:
    """Offsets of every serialised layer-type name (length-prefixed string)."""
    alternatives = b"|".join(re.escape(name) for name in LAYER_NAMES)
    pattern = re.compile(rb"\x01([\x04-\x15])(" + alternatives + rb")")
    return [m.start() for m in pattern.finditer(data) if m.group(1)[0] == len(m.group(2))]


def _read_layer(data: bytes, offset: int) -> Layer:
    reader = _Reader(data, offset)
    name = reader.string().decode()
    if name == "input_rgb_image_sized":
        mean = (reader.scalar(), reader.scalar(), reader.scalar())
        rows, cols = reader.integer(), reader.integer()
        if (rows, cols) != (CHIP_SIZE, CHIP_SIZE):
            raise DatFormatError(f"input size {rows}x{cols}, expected {CHIP_SIZE}")
        return Layer(name, offset, mean_rgb=mean)
    if name == "con_4":
        params = reader.tensor().reshape(-1)
        filters, rows, cols = reader.integer(), reader.integer(), reader.integer()
        stride_y, stride_x = reader.integer(), reader.integer()
        pad_y, pad_x = reader.integer(), reader.integer()
        n, k, nr, nc = reader.alias_shape()
        bias_shape = reader.alias_shape()
        if (n, nr, nc) != (filters, rows, cols) or stride_x != stride_y or pad_x != pad_y or rows != cols:
            raise DatFormatError(f"unexpected convolution geometry at {offset}")
        if bias_shape != (1, filters, 1, 1) or params.size != n * k * nr * nc + filters:
            raise DatFormatError(f"convolution parameter count mismatch at {offset}")
        weights = params[: n * k * nr * nc].reshape(n, k, nr, nc)
        bias = params[n * k * nr * nc :]
        return Layer(name, offset, conv=Conv(weights, bias, stride_y, pad_y))
    if name == "affine_":
        params = reader.tensor().reshape(-1)
        gamma_shape, beta_shape = reader.alias_shape(), reader.alias_shape()
        mode = reader.integer()
        channels = gamma_shape[1]
        if mode != 0 or gamma_shape != beta_shape or params.size != 2 * channels:
            raise DatFormatError(f"unexpected affine layer at {offset} (mode {mode})")
        return Layer(name, offset, affine=Affine(params[:channels], params[channels:]))
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(6))
        if rows != cols or stride_x != stride_y or pad_x != pad_y:
            raise DatFormatError(f"non-square pooling at {offset}")
        return Layer(name, offset, pool=Pool(rows, stride_y, pad_y))
    if name == "fc_2":
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor()
        weight_shape, bias_shape = reader.alias_shape(), reader.alias_shape()
        bias_mode = reader.integer()
        if weight_shape != (inputs, outputs, 1, 1) or bias_shape != (0, 0, 0, 0) or bias_mode != 1:
            raise DatFormatError(f"expected a fully connected layer without bias at {offset}")
        return Layer(name, offset, fc=params.reshape(inputs, outputs))
    return Layer(name, offset)


def read_layers(path: Path) -> list[Layer]:
    data = path.read_bytes()
    return [_read_layer(data, offset) for offset in _find_layers(data)]


def _take(layers: list[Layer], index: int, name: str) -> Layer:
    if index >= len(layers) or layers[index].name != name:
        found = layers[index].name if index < len(layers) else "end of file"
        raise DatFormatError(f"layer {index}: expected {name}, found {found}")
    return layers[index]


def parse_units(layers: list[Layer]) -> DlibResnet:
    """Checks the layer sequence against the network grammar and groups it into residual units.

    loss_metric, input, con affine relu max_pool, then units of
    con affine relu con affine [avg_pool] add_prev relu, then avg_pool (global) and fc.
    """
    _take(layers, 0, "loss_metric_2")
    first = _take(layers, 1, "input_rgb_image_sized")
    stem_conv = _take(layers, 2, "con_4").conv
    stem_affine = _take(layers, 3, "affine_").affine
    _take(layers, 4, "relu_")
    stem_pool = _take(layers, 5, "max_pool_2").pool
    assert first.mean_rgb and stem_conv and stem_affine and stem_pool
    units: list[ResidualUnit] = []
    i = 6
    while i < len(layers) and layers[i].name == "con_4":
        conv_a = _take(layers, i, "con_4").conv
        affine_a = _take(layers, i + 1, "affine_").affine
        _take(layers, i + 2, "relu_")
        conv_b = _take(layers, i + 3, "con_4").conv
        affine_b = _take(layers, i + 4, "affine_").affine
        i += 5
        shortcut: Pool | None = None
        if layers[i].name == "avg_pool_2":
            shortcut = layers[i].pool
            i += 1
        _take(layers, i, "add_prev_")
        _take(layers, i + 1, "relu_")
        i += 2
        assert conv_a and affine_a and conv_b and affine_b
        units.append(ResidualUnit(conv_a, affine_a, conv_b, affine_b, shortcut))
    global_pool = _take(layers, i, "avg_pool_2").pool
    fc = _take(layers, i + 1, "fc_2").fc
    if i + 2 != len(layers):
        raise DatFormatError(f"{len(layers) - i - 2} unexpected layers after the fully connected layer")
    if global_pool is None or global_pool.size != 0 or fc is None or fc.shape[1] != DESCRIPTOR_SIZE:
        raise DatFormatError("expected a global average pool and a 128-d fully connected output")
    return DlibResnet(
        mean_rgb=first.mean_rgb,
        stem_conv=stem_conv,
        stem_affine=stem_affine,
        stem_pool=stem_pool,
        units=units,
        fc=fc,
        layer_names=[layer.name for layer in layers],
    )


def load_dlib_resnet(path: Path) -> DlibResnet:
    return parse_units(read_layers(path))


# ---------------------------------------------------------------- numpy reference forward pass (NHWC)


def _conv(x: FloatArray, conv: Conv) -> FloatArray:
    """Cross-correlation over NHWC via im2col; float64 accumulation keeps the reference tight."""
    k = conv.weights.shape[2]
    s = conv.stride
    if conv.padding:
        p = conv.padding
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    _, h, w, _ = x.shape
    out_h = (h - k) // s + 1
    out_w = (w - k) // s + 1
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    windows = windows[:, :out_h, :out_w]  # (n, oh, ow, c, kh, kw)
    kernel = conv.weights.astype(np.float64)  # (out, c, kh, kw)
    y = np.tensordot(windows.astype(np.float64), kernel, axes=([3, 4, 5], [1, 2, 3]))
    return (y + conv.bias).astype(np.float32)


def _affine(x: FloatArray, affine: Affine) -> FloatArray:
    return (x * affine.gamma + affine.beta).astype(np.float32)


def _pool(x: FloatArray, pool: Pool, reduce: str) -> FloatArray:
    k, s = pool.size, pool.stride
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    out = windows.max(axis=(4, 5)) if reduce == "max" else windows.mean(axis=(4, 5))
    return out.astype(np.float32)


def _add_padded(a: FloatArray, b: FloatArray) -> FloatArray:
    """dlib's add_prev: the sum has the larger of each dimension; the smaller input is zero-extended."""
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape, strict=True))
    out = np.zeros(shape, dtype=np.float32)
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


def normalise_input(chips_rgb: NDArray[np.uint8], net: DlibResnet) -> FloatArray:
    mean = np.asarray(net.mean_rgb, dtype=np.float32)
    return ((chips_rgb.astype(np.float32) - mean) / INPUT_DIVISOR).astype(np.float32)


def reference_descriptors(net: DlibResnet, chips_rgb: NDArray[np.uint8]) -> FloatArray:
    """dlib's descriptor (not normalised) for (N,150,150,3) RGB uint8 chips."""
    if chips_rgb.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"chips must be (N,{CHIP_SIZE},{CHIP_SIZE},3), got {chips_rgb.shape}")
    x = normalise_input(chips_rgb, net)
    x = np.maximum(_affine(_conv(x, net.stem_conv), net.stem_affine), 0)
    x = _pool(x, net.stem_pool, "max")
    for unit in net.units:
        y = np.maximum(_affine(_conv(x, unit.conv_a), unit.affine_a), 0)
        y = _affine(_conv(y, unit.conv_b), unit.affine_b)
        shortcut = x if unit.shortcut_pool is None else _pool(x, unit.shortcut_pool, "avg")
        x = np.maximum(_add_padded(y, shortcut), 0)
    pooled = x.mean(axis=(1, 2), dtype=np.float64)
    return (pooled @ net.fc.astype(np.float64)).astype(np.float32)
