"""Converts dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``) to a compact .npz.

The source is ``face_recognition_models==0.3.0`` (pinned in the dev extra), checked against its sha256.
dlib's serialisation of a ``shape_predictor`` (read directly, no dlib), using the integer/float encoding
described in ``dlib_resnet.py``:

- ``int`` version, which must be 1;
- ``initial_shape``: a float column matrix (rows and columns written negated, then the values), the mean
  shape as (x0, y0, x1, y1, ...) in the unit square of the detection box;
- ``forests``: a vector (length first) of cascade levels, each a vector of regression trees; a tree is
  its ``splits`` (vector of ``idx1``, ``idx2`` unsigned integers and ``thresh`` float: a complete binary
  tree in breadth-first order) and its ``leaf_values`` (vector of float column matrices, one shape
  increment per leaf);
- ``anchor_idx``: per level, per feature pixel, the landmark it is anchored to;
- ``deltas``: per level, per feature pixel, its (x, y) offset from the anchor in the mean shape's frame.

The .npz holds equal-sized arrays (every level has the same tree count, depth and pixel count; the
converter checks this and fails otherwise) so the unit indexes them with numpy. Writing is byte-for-byte
deterministic (fixed zip timestamps), so the manifest's sha256 holds on a rebuild.

Run: ``python models/build/shape_predictor5.py`` (dev venv); it writes the file and prints its sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlib_resnet import DatFormatError, _Reader

SOURCE_PACKAGE = "face_recognition_models"
SOURCE_VERSION = "0.3.0"
SOURCE_MEMBER = "models/shape_predictor_5_face_landmarks.dat"
SOURCE_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
OUTPUT = Path(__file__).resolve().parents[1] / "dlib_shape_predictor_5" / "shape_predictor_5.npz"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def column(reader: _Reader) -> list[float]:
    rows, cols = reader.integer(), reader.integer()
    if cols not in (1, -1) or rows > 0:
        raise DatFormatError(f"expected a float column matrix, got {rows}x{cols}")
    return [reader.scalar() for _ in range(-rows)]


def read_predictor(data: bytes) -> dict[str, NDArray[np.generic]]:
    reader = _Reader(data, 0)
    if (version := reader.integer()) != 1:
        raise DatFormatError(f"shape_predictor version {version}, expected 1")
    initial = np.array(column(reader), dtype=np.float32)
    splits: list[list[tuple[int, int, float]]] = []
    leaves: list[list[list[float]]] = []
    levels = reader.integer()
    trees_per_level = []
    for _ in range(levels):
        trees = reader.integer()
        trees_per_level.append(trees)
        for _ in range(trees):
            splits.append(
                [(reader.integer(), reader.integer(), reader.scalar()) for _ in range(reader.integer())]
            )
            leaves.append([column(reader) for _ in range(reader.integer())])
    anchors = [[reader.integer() for _ in range(reader.integer())] for _ in range(reader.integer())]
    deltas = [
        [(reader.scalar(), reader.scalar()) for _ in range(reader.integer())] for _ in range(reader.integer())
    ]
    if reader.pos != len(data):
        raise DatFormatError(f"{len(data) - reader.pos} bytes left after the shape predictor")
    if (
        len(set(trees_per_level)) != 1
        or len({len(s) for s in splits}) != 1
        or len({len(v) for v in leaves}) != 1
    ):
        raise DatFormatError("levels or trees of unequal size: this converter expects a regular cascade")
    if len(anchors) != levels or len(deltas) != levels or len({len(a) for a in anchors}) != 1:
        raise DatFormatError("anchor/delta tables do not match the cascade")
    if len(splits[0]) + 1 != len(leaves[0]):
        raise DatFormatError("trees are not complete binary trees")
    shape = (levels, trees_per_level[0])
    split_array = np.array(splits, dtype=np.float64).reshape(*shape, len(splits[0]), 3)
    return {
        "initial_shape": initial.reshape(-1, 2),
        "split_pixels": split_array[..., :2].astype(np.int32),  # (levels, trees, splits, 2)
        "split_thresholds": split_array[..., 2].astype(np.float32),  # (levels, trees, splits)
        "leaf_values": np.array(leaves, dtype=np.float32).reshape(*shape, len(leaves[0]), -1, 2),
        "anchor_index": np.array(anchors, dtype=np.int32),  # (levels, pixels)
        "anchor_deltas": np.array(deltas, dtype=np.float32),  # (levels, pixels, 2)
    }


def source_file() -> Path:
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{SOURCE_PACKAGE}=={SOURCE_VERSION} is not installed (dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_MEMBER
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {SOURCE_SHA256}")
    return path


def write_npz(arrays: dict[str, NDArray[np.generic]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def main() -> None:
    arrays = read_predictor(source_file().read_bytes())
    write_npz(arrays, OUTPUT)
    print(
        json.dumps(
            {
                "path": str(OUTPUT),
                "sha256": hashlib.sha256(OUTPUT.read_bytes()).hexdigest(),
                "bytes": OUTPUT.stat().st_size,
                "shapes": {name: list(array.shape) for name, array in arrays.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
