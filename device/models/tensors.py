"""A model file's tensors as plain numbers: what each input and output holds, and the arithmetic that
turns real values and pixels into what an int8 or uint8 file wants and its outputs back into float32.

Small pure functions over numpy arrays; no interpreter, no file, no state beyond a lookup-table cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a file: its index, shape and type, and its quantisation (scale 0: real)."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.dtype(np.uint8), np.dtype(np.int8)) and self.scale > 0.0

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            index=int(details["index"]),
            shape=tuple(int(n) for n in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


def quantize(values: NDArray[np.float32], spec: TensorSpec) -> NDArray[Any]:
    info = np.iinfo(spec.dtype)
    scaled = np.rint(values / spec.scale + spec.zero_point)
    quantized: NDArray[Any] = np.clip(scaled, info.min, info.max).astype(spec.dtype)
    return quantized


def dequantize(values: NDArray[Any], spec: TensorSpec) -> NDArray[np.float32]:
    if not spec.quantized:
        return values.astype(np.float32, copy=True)
    return ((values.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)).astype(
        np.float32
    )


Prepare = Callable[[NDArray[Any], TensorSpec], NDArray[Any]]


def prepare_float(chunk: NDArray[Any], spec: TensorSpec) -> NDArray[Any]:
    """Real-valued input as the file wants it: quantised for int8/uint8 files."""
    values = chunk.astype(np.float32, copy=False)
    return quantize(values, spec) if spec.quantized else values.astype(spec.dtype, copy=False)


def pixel_preparer(mean: float, std: float) -> Prepare:
    """uint8 pixels whose real value is (pixel - mean) / std, as the file wants them.

    For a quantised input, a 256-entry table maps each pixel to exactly the value that quantising the
    float would give (rounding included): one table lookup per frame instead of a float round trip.
    """
    tables: dict[TensorSpec, NDArray[Any]] = {}

    def prepare(chunk: NDArray[Any], spec: TensorSpec) -> NDArray[Any]:
        if not spec.quantized:
            values = (chunk.astype(np.float32) - np.float32(mean)) * np.float32(1.0 / std)
            return values.astype(spec.dtype, copy=False)
        table = tables.get(spec)
        if table is None:
            levels = (np.arange(256, dtype=np.float32) - np.float32(mean)) * np.float32(1.0 / std)
            table = tables[spec] = quantize(levels, spec)
        if table.itemsize == 1 and chunk.flags.c_contiguous:
            # OpenCV's table lookup: the same bytes as np.take, in about a third of the time for a
            # detector frame (int8 tables are looked up as their uint8 bit patterns)
            shape = chunk.shape
            flat = chunk.reshape(-1, 1)
            looked_up = cv2.LUT(flat, table.view(np.uint8))
            return np.asarray(looked_up, dtype=np.uint8).view(table.dtype).reshape(shape)
        return np.take(table, chunk)

    return prepare
