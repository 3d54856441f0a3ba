"""`device snapshot --annotate`: one picture from the unit's own camera, for aiming it.

The frame goes through the same orientation, detector and zone as the service; the faces are boxed and
the entrance zone drawn, and the picture is written once, locally, mode 0600. It holds faces: the command
says so, nothing is published, and the installer deletes it after aiming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.atomicio import write_atomically
from device.config import UnitConfig
from device.errors import UserError
from device.types import Detection, RgbImage
from device.vision.capture import open_source
from device.vision.capture.source import CameraError, EndOfStream
from device.vision.detect import FaceDetector, annotate

SNAPSHOT_MODE = 0o600
ZONE_COLOUR = (255, 200, 0)  # RGB: amber, unlike the green face boxes
FRAMES_TO_SETTLE = 5  # a camera's first frames are often dark while exposure settles


class SnapshotError(UserError):
    pass


@dataclass(frozen=True)
class Snapshot:
    path: Path
    faces: list[Detection]
    width: int
    height: int
    in_zone: int


def grab_frame(config: UnitConfig) -> RgbImage:
    source = open_source(config.capture)
    try:
        source.open()
        frame = source.read()
        if source.live:
            for _ in range(FRAMES_TO_SETTLE):
                frame = source.read()
    except (CameraError, EndOfStream) as error:
        raise SnapshotError(
            f"capture {config.capture.backend} {config.capture.source_label()!r}: {error}"
        ) from None
    finally:
        source.close()
    return frame


def draw_zone(image: RgbImage, zone: list[tuple[float, float]]) -> RgbImage:
    """The entrance zone as a closed outline (the whole frame when no zone is set)."""
    height, width = image.shape[:2]
    corners = zone or [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    points = np.array([[round(x * (width - 1)), round(y * (height - 1))] for x, y in corners], np.int32)
    canvas = image.copy()
    thickness = max(2, round(max(width, height) / 300))
    cv2.polylines(canvas, [points.reshape(-1, 1, 2)], isClosed=True, color=ZONE_COLOUR, thickness=thickness)
    return canvas


def take_snapshot(config: UnitConfig, detector: FaceDetector, out: Path, *, annotate_faces: bool) -> Snapshot:
    image = grab_frame(config)
    faces = detector.detect(image)
    picture = draw_zone(annotate(image, faces), config.detection.zone) if annotate_faces else image
    ok, encoded = cv2.imencode(out.suffix or ".png", np.ascontiguousarray(picture[:, :, ::-1]))
    if not ok:
        raise SnapshotError(f"cannot encode a picture as {out.suffix!r}: use .png or .jpg")
    write_atomically(out, encoded.tobytes(), SNAPSHOT_MODE)
    in_zone = len(faces)  # the detector already drops faces outside the zone
    return Snapshot(out, faces, image.shape[1], image.shape[0], in_zone)
