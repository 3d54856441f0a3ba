"""Face detection: letterbox the frame, run the detector model, decode, keep faces in the entrance zone.

Two decoders, chosen by ``detection.decoder`` (``auto`` looks at the model's outputs):

- ``blazeface``: MediaPipe's full-range BlazeFace (192x192, one anchor per cell of a 48x48 grid). Raw
  outputs are offsets from the anchor centre in input pixels and a logit per anchor; overlapping boxes are
  merged by score-weighted averaging (MediaPipe's "weighted NMS"), which steadies boxes and keypoints.
- ``ssd_postprocess``: models that end in TFLite_Detection_PostProcess (boxes, classes, scores, count),
  such as Coral's ``ssd_mobilenet_v2_face_quant_postprocess_edgetpu.tflite``. They give no keypoints, so
  the six keypoints are placed at average positions inside the box (see ``SSD_KEYPOINT_LAYOUT``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from device.config import DetectionSection
from device.models.accelerator import InferenceModel
from device.types import Box, Detection, FrameViews, Letterbox, RgbImage

log = logging.getLogger(__name__)

BLAZEFACE_GRID = 48  # 192 input / stride 4
BLAZEFACE_REGRESSORS = 16  # box (cx, cy, w, h) + 6 keypoints (x, y)
LOGIT_CLIP = 100.0
# Both detectors take RGB scaled to -1..1: (pixel - 127.5) / 127.5.
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5

# Average keypoint positions inside a face box (fractions of its width and height), in Keypoint order.
# The mean over the 25 BlazeFace faces of the fixture photos, made left/right symmetric; used only for SSD
# models, which output no keypoints, so alignment of their faces is approximate.
SSD_KEYPOINT_LAYOUT = np.array(
    [[0.31, 0.33], [0.69, 0.33], [0.50, 0.57], [0.50, 0.75], [0.12, 0.40], [0.88, 0.40]], dtype=np.float32
)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` frame lands in a ``size`` square: (inner width, inner height, pad x,
    pad y). The camera's ISP can scale to the inner size directly (``device.vision.views``)."""
    scale = size / max(height, width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def padded(inner: RgbImage, width: int, height: int, size: int) -> Letterbox:
    """``inner`` (already scaled to the letterbox's inner size) placed on the black ``size`` square."""
    new_w, new_h, pad_x, pad_y = letterbox_geometry(width, height, size)
    if inner.shape[:2] != (new_h, new_w):
        raise ValueError(f"letterbox inner picture is {inner.shape[1]}x{inner.shape[0]}, not {new_w}x{new_h}")
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = inner
    return Letterbox(canvas, new_w / width, new_h / height, pad_x, pad_y)


def letterbox(image: RgbImage, size: int) -> Letterbox:
    """Fit ``image`` into a ``size`` square, keeping its aspect ratio, padding with black.

    Halving with pyrDown first and finishing with a bilinear resize costs a fraction of INTER_AREA
    on a 640x480 frame while still low-pass filtering before the big downscale.
    """
    height, width = image.shape[:2]
    small: NDArray[np.uint8] = image
    while max(small.shape[:2]) >= 2 * size:
        small = np.asarray(cv2.pyrDown(small), dtype=np.uint8)
    new_w, new_h, _, _ = letterbox_geometry(width, height, size)
    resized = np.asarray(cv2.resize(small, (new_w, new_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    return padded(resized, width, height, size)


# The retry pass shrinks the frame to this share of the detector input: a face that filled the frame
# then has the size BlazeFace full-range learnt (issue 28: the faces one pass missed on ../shared/lfw scored
# 0.30-0.48, and 0.57-0.81 shrunk).
RETRY_SHRINK = 2
RETRY_MIN_IOU = 0.5


def shrunk_letterbox(image: RgbImage, size: int, shrink: int = RETRY_SHRINK) -> Letterbox:
    """The frame letterboxed into the middle ``size // shrink`` square of a black ``size`` square."""
    inner = letterbox(image, size // shrink)
    offset = (size - size // shrink) // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[offset : offset + inner.tensor.shape[0], offset : offset + inner.tensor.shape[1]] = inner.tensor
    return Letterbox(canvas, inner.scale_x, inner.scale_y, inner.pad_x + offset, inner.pad_y + offset)


def blazeface_anchors(grid: int = BLAZEFACE_GRID) -> NDArray[np.float32]:
    """Anchor centres (x, y) in [0, 1], row-major over the grid: one fixed-size anchor per cell."""
    centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass(frozen=True)
class RawFace:
    """A decoded face in model-input pixels, before mapping back to the frame."""

    box: NDArray[np.float32]  # x0, y0, x1, y1
    score: float
    keypoints: NDArray[np.float32]  # (6, 2)


def sigmoid(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    # maximum/minimum rather than np.clip: the same values, without clip's dispatch cost (per frame)
    clipped = np.minimum(np.maximum(logits, -LOGIT_CLIP), LOGIT_CLIP)
    result: NDArray[np.float32] = (1.0 / (1.0 + np.exp(-clipped))).astype(np.float32)
    return result


def decode_blazeface(
    regressors: NDArray[np.float32],
    logits: NDArray[np.float32],
    anchors: NDArray[np.float32],
    input_size: int,
    score_threshold: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Candidates above the threshold: boxes (N, 4) x0,y0,x1,y1, scores (N,), keypoints (N, 6, 2).

    All in input pixels. ``regressors`` is (A, 16), ``logits`` (A,) for A anchors.
    """
    threshold_logit = np.log(score_threshold / (1.0 - score_threshold))
    keep = np.flatnonzero(logits > threshold_logit)
    if keep.size == 0:  # most frames: nothing to decode
        return (
            np.empty((0, 4), dtype=np.float32),
            np.empty(0, dtype=np.float32),
            np.empty((0, 6, 2), dtype=np.float32),
        )
    raw = regressors[keep]
    centres = anchors[keep] * input_size
    cx = centres[:, 0] + raw[:, 0]
    cy = centres[:, 1] + raw[:, 1]
    half_w = raw[:, 2] / 2.0
    half_h = raw[:, 3] / 2.0
    boxes = np.empty((keep.size, 4), dtype=np.float32)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    keypoints = (raw[:, 4:16].reshape(-1, 6, 2) + centres[:, None, :]).astype(np.float32)
    return boxes, sigmoid(logits[keep]), keypoints


def iou_one_to_many(box: NDArray[np.float32], boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    # Corners two columns at a time and np.maximum for the clamp (np.clip's dispatch costs several
    # times more): the same element-wise arithmetic as one coordinate at a time, in fewer calls.
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:4], boxes[:, 2:4])
    sides = np.maximum(bottom_right - top_left, 0)
    inter = sides[:, 0] * sides[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    result: NDArray[np.float32] = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)
    return result


def weighted_nms(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    keypoints: NDArray[np.float32],
    iou_threshold: float,
) -> list[RawFace]:
    """Cluster candidates around the best remaining one; each cluster becomes its score-weighted mean.

    The cluster keeps the best score (averaging scores would penalise faces seen by many anchors).
    """
    if scores.size == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    remaining = np.arange(len(scores))
    faces = []
    while remaining.size:
        lead = remaining[0]
        overlap = iou_one_to_many(boxes[lead], boxes[remaining])
        members = remaining[overlap > iou_threshold]
        members = members if members.size else remaining[:1]
        weights = scores[members] / scores[members].sum()
        faces.append(
            RawFace(
                box=(boxes[members] * weights[:, None]).sum(axis=0).astype(np.float32),
                score=float(scores[lead]),
                keypoints=(keypoints[members] * weights[:, None, None]).sum(axis=0).astype(np.float32),
            )
        )
        remaining = remaining[overlap <= iou_threshold]
        remaining = remaining[remaining != lead]
    return faces


def decode_ssd_postprocess(
    outputs: list[NDArray[np.float32]], input_size: int, score_threshold: float
) -> list[RawFace]:
    """TFLite_Detection_PostProcess outputs (boxes [ymin, xmin, ymax, xmax] in 0..1, classes, scores,
    count) to faces in input pixels, keypoints placed by ``SSD_KEYPOINT_LAYOUT``."""
    if len(outputs) != 4:
        raise ValueError(f"an SSD post-process model has 4 outputs, this one has {len(outputs)}")
    boxes_out = next(o for o in outputs if o.ndim == 3 and o.shape[-1] == 4)
    count_out = next(o for o in outputs if o.size == 1)
    pair = [o for o in outputs if o is not boxes_out and o is not count_out]
    classes_out, scores_out = pair
    # The standard order is boxes, classes, scores, count; class ids are whole numbers, scores are not.
    if _whole_numbers(scores_out) and not _whole_numbers(classes_out):
        classes_out, scores_out = scores_out, classes_out
    count = int(np.clip(count_out.ravel()[0], 0, boxes_out.shape[1]))
    faces = []
    for index in range(count):
        score = float(scores_out.reshape(-1)[index])
        if score < score_threshold:
            continue
        ymin, xmin, ymax, xmax = (np.clip(boxes_out[0, index], 0.0, 1.0) * input_size).tolist()
        if xmax <= xmin or ymax <= ymin:
            continue
        box = np.array([xmin, ymin, xmax, ymax], dtype=np.float32)
        size = np.array([xmax - xmin, ymax - ymin], dtype=np.float32)
        keypoints = (box[:2] + SSD_KEYPOINT_LAYOUT * size).astype(np.float32)
        faces.append(RawFace(box=box, score=score, keypoints=keypoints))
    return faces


def _whole_numbers(values: NDArray[np.float32]) -> bool:
    return bool(np.all(np.equal(np.mod(values, 1.0), 0.0)))


def point_in_polygon(x: float, y: float, polygon: NDArray[np.float32]) -> bool:
    """Even-odd rule; points on the boundary count as inside."""
    return bool(cv2.pointPolygonTest(polygon.reshape(-1, 1, 2), (float(x), float(y)), False) >= 0)


# Grey frames (a NoIR camera under IR light, a day/night camera at night): BlazeFace learnt faces in
# colour; on the grey fixture faces it scored down to 0.20 while grey face-free pictures reached 0.50, so
# no one threshold served both. Given a skin chroma, the same grey frames (also half size and
# under-exposed) scored at least 0.452 (faces, float file; int8 0.454) and at most 0.371 (face-free; int8
# 0.323): the grey path tints the detector's input and uses ``detection.grey_score_threshold`` (issue 15,
# ``device models eval --detection-sweep``). The tint was chosen among six skin-like ratios as the one with
# the widest gap in both files (a warmer (1, 0.75, 0.6) left the int8 file no gap at all).
SKIN_TINT = np.array([1.0, 0.65, 0.5], dtype=np.float32)
GREY_MAX_CHROMA = 3.0  # mean |R-G| + |G-B| in levels over a sparse grid: below this a frame has no colour
GREY_SAMPLE_STEP = 8  # px between the pixels the grey test looks at


def is_grey(image_rgb: RgbImage) -> bool:
    """True when the frame carries no colour worth the name (every channel about the same)."""
    sample = image_rgb[::GREY_SAMPLE_STEP, ::GREY_SAMPLE_STEP].astype(np.int16)
    chroma = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(chroma.mean()) <= GREY_MAX_CHROMA


def skin_tinted(tensor: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The grey picture with an average skin chroma (what the detector learnt faces to look like)."""
    luma = cv2.cvtColor(tensor, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.asarray(np.clip(luma[..., None] * SKIN_TINT, 0, 255), dtype=np.uint8)


class FaceDetector:
    """Faces in an RGB frame, in that frame's pixel coordinates, best score first.

    Grey frames (or every frame with ``infrared``: a NoIR camera whose IR picture has a colour cast) take
    the grey path: the detector's input gets a skin tint and the grey score threshold applies.
    """

    def __init__(self, model: InferenceModel, detection: DetectionSection, *, infrared: bool = False) -> None:
        shape = model.input_shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"detector {model.name} needs a square RGB input, has {shape}")
        self.model = model
        self.config = detection
        self.input_size = shape[1]
        self._decoder = detection.decoder
        self._anchors = blazeface_anchors(self.input_size // 4)
        self._zone = np.array(detection.zone, dtype=np.float32) if detection.zone else None
        self.infrared = infrared

    def takes_grey_path(self, image_rgb: RgbImage, views: FrameViews | None = None) -> bool:
        """Whether ``detect`` treats this frame as grey (the views' grey test when they bring one)."""
        colourless = views.colourless if views is not None else None
        return self.infrared or (is_grey(image_rgb) if colourless is None else colourless)

    def detect(self, image_rgb: RgbImage, views: FrameViews | None = None) -> list[Detection]:
        """Faces in ``image_rgb``; ``views`` may bring its letterbox and grey test, prepared off the
        pipeline thread (the capture thread or the camera's ISP), so that only inference is left here."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}"
            )
        prepared = views.detector_input if views is not None else None
        fits = prepared is not None and prepared.tensor.shape == (self.input_size, self.input_size, 3)
        boxed = prepared if prepared is not None and fits else letterbox(image_rgb, self.input_size)
        grey = self.takes_grey_path(image_rgb, views)
        tensor = skin_tinted(boxed.tensor) if grey else boxed.tensor
        outputs = self.model.run_pixels(tensor[None], PIXEL_MEAN, PIXEL_STD)
        threshold = self.config.grey_score_threshold if grey else self.config.score_threshold
        faces = self.decode(outputs, threshold)
        if not faces and not grey and self.worth_retrying(outputs):
            boxed, faces = self.retry(image_rgb, boxed, outputs, threshold)
        height, width = image_rgb.shape[:2]
        detections = []
        for face in faces:
            corners = boxed.to_frame(face.box.reshape(2, 2))
            # clamped to the frame in plain floats: np.clip costs more than the rest of this loop
            (x0, y0), (x1, y1) = corners.tolist()
            right, bottom = float(width), float(height)
            box = Box(
                min(max(x0, 0.0), right),
                min(max(y0, 0.0), bottom),
                min(max(x1, 0.0), right),
                min(max(y1, 0.0), bottom),
            )
            if box.width < self.config.min_face_px or box.height < self.config.min_face_px:
                continue
            if self._zone is not None:
                cx = (box.x0 + box.x1) / 2.0 / width
                cy = (box.y0 + box.y1) / 2.0 / height
                if not point_in_polygon(cx, cy, self._zone):
                    continue
            keypoints = boxed.to_frame(face.keypoints).astype(np.float32)
            detections.append(Detection(box=box, score=face.score, keypoints=keypoints))
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections

    def retry(
        self, image_rgb: RgbImage, first: Letterbox, outputs: list[NDArray[np.float32]], threshold: float
    ) -> tuple[Letterbox, list[RawFace]]:
        """The colour frame shrunk to half the input; a face found there counts only where the first pass
        had a candidate of at least ``retry_score`` (the same place, IoU > ``RETRY_MIN_IOU``).

        Colour frames only: on the grey path (skin tint, lower threshold) the shrunk frame found grey
        face-free pictures (coins 0.65, a cell 0.43) even where the first pass suspected the same place.
        """
        boxed = shrunk_letterbox(image_rgb, self.input_size)
        faces = self.decode(self.model.run_pixels(boxed.tensor[None], PIXEL_MEAN, PIXEL_STD), threshold)
        if not faces:
            return boxed, []
        suspects = self.decode(outputs, self.config.retry_score)
        if not suspects:
            return boxed, []
        # Both passes' boxes in frame pixels, to compare them.
        suspected = np.array([first.to_frame(face.box.reshape(2, 2)).reshape(4) for face in suspects])
        confirmed = [
            face
            for face in faces
            if float(iou_one_to_many(boxed.to_frame(face.box.reshape(2, 2)).reshape(4), suspected).max())
            > RETRY_MIN_IOU
        ]
        return boxed, confirmed

    def worth_retrying(self, outputs: list[NDArray[np.float32]]) -> bool:
        """A BlazeFace candidate scored ``retry_score`` or more: perhaps a face too large for the model.

        Read from the strongest raw logit, so that the faces of the first pass are decoded exactly as
        without the retry (a lower decode threshold would pull weak candidates into their clusters).
        """
        if self.config.retry_score >= 1.0 or len(outputs) == 4:  # disabled, or an SSD model
            return False
        logits = next((o for o in outputs if o.shape[-1] == 1), None)
        if logits is None or logits.size == 0:
            return False
        retry_logit = math.log(self.config.retry_score / (1.0 - self.config.retry_score))
        return float(np.max(logits)) >= retry_logit

    def decode(self, outputs: list[NDArray[np.float32]], threshold: float | None = None) -> list[RawFace]:
        decoder = self._decoder
        if decoder == "auto":
            decoder = "ssd_postprocess" if len(outputs) == 4 else "blazeface"
        threshold = self.config.score_threshold if threshold is None else threshold
        if decoder == "ssd_postprocess":
            return decode_ssd_postprocess(outputs, self.input_size, threshold)
        regressors = next(o for o in outputs if o.shape[-1] == BLAZEFACE_REGRESSORS)
        logits = next(o for o in outputs if o.shape[-1] == 1)
        boxes, scores, keypoints = decode_blazeface(
            regressors.reshape(-1, BLAZEFACE_REGRESSORS),
            logits.reshape(-1),
            self._anchors,
            self.input_size,
            threshold,
        )
        return weighted_nms(boxes, scores, keypoints, self.config.nms_iou)


KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))


def annotate(image_rgb: RgbImage, detections: list[Detection]) -> RgbImage:
    """A copy of the image with each face's box, score and keypoints drawn (for local inspection only)."""
    canvas = image_rgb.copy()
    thickness = max(1, round(max(image_rgb.shape[:2]) / 400))
    for detection in detections:
        box = detection.box
        top_left = (round(box.x0), round(box.y0))
        cv2.rectangle(canvas, top_left, (round(box.x1), round(box.y1)), (0, 255, 0), thickness)
        label = f"{detection.score:.2f}"
        cv2.putText(
            canvas,
            label,
            (top_left[0], max(0, top_left[1] - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            (0, 255, 0),
            thickness,
        )
        for (x, y), colour in zip(detection.keypoints.tolist(), KEYPOINT_COLOURS, strict=True):
            cv2.circle(canvas, (round(x), round(y)), 2 * thickness, colour, -1)
    return canvas
