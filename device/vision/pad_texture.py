"""The texture cue of presentation-attack detection: MiniFASNet V2 + V1SE, P(bona fide) of one face.

Each model sees its own crop of the frame: the face box scaled about its centre by the model's crop
scale (reduced when the image is too small for it, then shifted back inside the image), resized to
80x80, as BGR pixel values 0..255 without normalisation. Each gives three logits; softmax class 1 is
"bona fide" (0 and 2 are attack kinds). The cue is the mean of the models' class-1 probabilities.

Crop scales: the reference implementation used 2.7 (V2) and 4.0 (V1SE) on RetinaFace boxes, which are
larger than BlazeFace's (on the live sample 207x213 against 192x192: copying the reference's crop would
mean ~1.09x its scales). ``BLAZEFACE_CROP_SCALE`` is re-fitted to BlazeFace's boxes instead, by
``device.evaluation.pad_models.crop_scale_sweep`` (both models at f x their reference scale, f from 0.6
to 1.3, every fixture face and the three public samples, each box plus 7 jittered copies): at
f = 0.6 to 0.75, 0 to 2 of 240 bona fide crops fall below 0.5, at f = 1.0 15 and at f = 1.1 18, while
the print and screen samples stay below 0.18 at every f. f = 0.65 is inside that plateau with none
below 0.5 and the highest 10th percentile of bona fide P(real) (0.935). Caveat: the fixture photos are
tightly framed, so large crops hit their edges; the project's own attack set (``make pad-fixtures``) is
the check that smaller crops still catch prints and screens. The sweep's figures are in models/manifest.json.

The texture cue alone is not a liveness decision (it misfires on some real news photos and passes some
prints and screens); the PAD stage fuses it with other cues.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import UnitConfig
from device.types import Box, RgbImage

log = logging.getLogger(__name__)

INPUT_SIZE = 80
BONA_FIDE_CLASS = 1
# The reference crop scales (RetinaFace boxes) and the ones used with BlazeFace boxes, per model name.
REFERENCE_CROP_SCALE = {"minifasnet_v2": 2.7, "minifasnet_v1se": 4.0}
BLAZEFACE_CROP_FACTOR = 0.65
BLAZEFACE_CROP_SCALE = {
    name: round(scale * BLAZEFACE_CROP_FACTOR, 4) for name, scale in REFERENCE_CROP_SCALE.items()
}


class TextureModel(Protocol):
    """What the cue needs from device.models.accelerator's InferenceModel."""

    name: str

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def run(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]: ...


def crop_box(box: Box, image_width: int, image_height: int, scale: float) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1), x1/y1 exclusive: ``box`` scaled about its centre, kept inside the image.

    The scale is reduced when the image cannot hold the scaled box, then the box is shifted (not cut)
    back inside the image, so the model always sees the context around the face it was trained with.
    """
    if image_width < 2 or image_height < 2:
        raise ValueError(f"image of {image_width}x{image_height} is too small to crop")
    box_w = max(box.width, 1.0)
    box_h = max(box.height, 1.0)
    scale = min(scale, (image_height - 1) / box_h, (image_width - 1) / box_w)
    new_w, new_h = box_w * scale, box_h * scale
    centre_x, centre_y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    left, top = centre_x - new_w / 2, centre_y - new_h / 2
    right, bottom = centre_x + new_w / 2, centre_y + new_h / 2
    max_x, max_y = image_width - 1, image_height - 1
    if left < 0:
        right, left = right - left, 0.0
    if top < 0:
        bottom, top = bottom - top, 0.0
    if right > max_x:
        left, right = left - (right - max_x), float(max_x)
    if bottom > max_y:
        top, bottom = top - (bottom - max_y), float(max_y)
    x0, y0 = max(0, int(left)), max(0, int(top))
    x1, y1 = min(image_width, int(right) + 1), min(image_height, int(bottom) + 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def texture_crop(image_rgb: RgbImage, box: Box, scale: float) -> NDArray[np.uint8]:
    """The model's 80x80 BGR input for the face in ``box``."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    if not all(math.isfinite(v) for v in (box.x0, box.y0, box.x1, box.y1)):
        raise ValueError(f"face box has non-finite coordinates: {box}")
    height, width = image_rgb.shape[:2]
    x0, y0, x1, y1 = crop_box(box, width, height, scale)
    patch = image_rgb[y0:y1, x0:x1, ::-1]
    resized = cv2.resize(np.ascontiguousarray(patch), (INPUT_SIZE, INPUT_SIZE))  # bilinear
    return np.asarray(resized, dtype=np.uint8)


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: NDArray[np.float32] = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return result


@dataclass(frozen=True)
class TextureScores:
    p_real: float  # mean over the models
    per_model: dict[str, float]


class TextureCue:
    """P(bona fide) of a face from the MiniFASNet models, each on its own crop of the frame."""

    def __init__(self, models: Sequence[TextureModel], scales: Sequence[float]) -> None:
        if not models or len(models) != len(scales):
            raise ValueError("the texture cue needs at least one model and one crop scale per model")
        for model in models:
            if tuple(model.input_shape) != (1, INPUT_SIZE, INPUT_SIZE, 3):
                raise ValueError(
                    f"texture model {model.name} input must be (1, {INPUT_SIZE}, {INPUT_SIZE}, 3), "
                    f"has {tuple(model.input_shape)}"
                )
        if any(not (1.0 <= s <= 8.0) for s in scales):
            raise ValueError(f"crop scales must be within 1..8, got {list(scales)}")
        self.models = tuple(models)
        self.scales = tuple(float(s) for s in scales)

    def scores(self, image_rgb: RgbImage, box: Box) -> TextureScores:
        per_model: dict[str, float] = {}
        for model, scale in zip(self.models, self.scales, strict=True):
            crop = texture_crop(image_rgb, box, scale).astype(np.float32)[None]
            logits = np.asarray(model.run(crop)[0], dtype=np.float32).reshape(1, -1)
            if logits.shape[1] != 3:
                raise ValueError(f"texture model {model.name} gave {logits.shape[1]} logits, expected 3")
            per_model[model.name] = float(softmax(logits)[0, BONA_FIDE_CLASS])
        return TextureScores(float(np.mean(list(per_model.values()))), per_model)

    def p_real(self, image_rgb: RgbImage, box: Box) -> float:
        """Mean over the models of softmax class 1 (bona fide), in 0..1."""
        return self.scores(image_rgb, box).p_real


def crop_scale_for(name: str) -> float:
    """The BlazeFace-fitted crop scale of a shipped model; a model unknown here gets the V2 scale."""
    return BLAZEFACE_CROP_SCALE.get(name, BLAZEFACE_CROP_SCALE["minifasnet_v2"])


def open_texture_cue(config: UnitConfig, *, state_dir: Path | None = None) -> TextureCue:
    """The texture cue from the models named by ``[models] pad_texture`` (accelerator seam, sha256-checked).

    Raises ``device.models.manifest.ModelFileError`` when a file is missing or does not match the manifest.
    """
    from device.models.accelerator import open_model

    models = [open_model(config.models, name, state_dir=state_dir) for name in config.models.pad_texture]
    for model in models:
        log.info("texture model %s on %s (%s file)", model.name, model.state, model.variant)
    return TextureCue(models, [crop_scale_for(model.name) for model in models])
