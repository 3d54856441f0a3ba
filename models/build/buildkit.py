"""What the model build scripts share: their command line and the Edge TPU's int8 conversion.

A build script's own folder is on ``sys.path`` (Python puts it there for a script; the scripts that tests
import put it there themselves), so each imports this as ``buildkit``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(tempfile.gettempdir()) / "entrance-camera-build"


def build_arguments(description: str) -> argparse.ArgumentParser:
    """``--models-dir`` (default: the repository's models/) and ``--cache`` (downloads, kept between runs);
    the script adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--cache", type=Path, default=CACHE)
    return parser


def log_progress() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def quantise_full_int8(converter: Any, representative: Callable[[], Iterator[list[np.ndarray]]]) -> None:
    """Full-integer post-training quantisation of a ``tf.lite.TFLiteConverter``, calibrated on
    ``representative``'s inputs, with uint8 in and out: the only kind the Edge TPU compiler maps."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
