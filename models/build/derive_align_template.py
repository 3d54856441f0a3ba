"""Derives device/vision/align.py's chip template: where BlazeFace's keypoints land on dlib's face chip.

dlib's embedder was trained on chips from ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)``,
placed by its 5-point shape predictor (eye corners and the base of the nose). The unit has BlazeFace's
keypoints instead (eye centres, nose tip, mouth centre). So, for every fixture face both find:

1. rebuild dlib's image -> chip mapping from ``get_face_chip_details`` (the chip's corners are the
   corners of ``rect`` rotated by ``angle`` about its centre) and check it by warping the image with it
   and comparing with dlib's own chip;
2. map BlazeFace's four keypoints through that mapping into chip coordinates;
3. average over faces, then make the template left-right symmetric (a mirror image of a face must give
   the mirrored chip): eyes share one height and mirror about the centre column, nose and mouth sit on it.

Run in the dev venv (needs dlib-bin, face_recognition_models and the detector model):
``python models/build/derive_align_template.py``; it prints the template and per-face residuals as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CHIP = 150
PADDING = 0.25
FIXTURES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"] + [f"sample{i}.jpg" for i in range(1, 7)]


def main() -> None:
    import dlib

    from device.evaluation import fixtures
    from device.models import accelerator
    from device.vision.align import warp_to_chip
    from device.config import UnitConfig
    from device.vision.detect import FaceDetector
    from device.evaluation.embedder import SHAPE_PREDICTOR_FILE, dlib_chip_matrix, dlib_model_file

    config = UnitConfig()
    detector = FaceDetector(accelerator.open_model(config.models, config.models.detector), config.detection)
    dlib_detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR_FILE)))

    points: list[np.ndarray] = []
    report: list[dict[str, object]] = []
    for name in FIXTURES:
        image = fixtures.load_rgb(name)
        faces = detector.detect(image)
        for rect in dlib_detector(image, 1):
            shape = shapes(image, rect)
            details = dlib.get_face_chip_details(shape, size=CHIP, padding=PADDING)
            matrix = dlib_chip_matrix(details)
            ours = warp_to_chip(image, matrix)
            theirs = np.asarray(dlib.get_face_chip(image, shape, size=CHIP, padding=PADDING))
            centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
            match = min(faces, key=lambda d: float(np.hypot(*(d.keypoints[2] - centre))), default=None)
            if match is None or np.hypot(*(match.keypoints[2] - centre)) > rect.width() / 2:
                continue
            keypoints = match.keypoints[:4].astype(np.float64)
            on_chip = keypoints @ matrix[:, :2].T + matrix[:, 2]
            points.append(on_chip)
            report.append(
                {
                    "image": name,
                    "mapping_check_mean_abs_pixel": float(np.abs(ours.astype(float) - theirs).mean()),
                    "keypoints_on_chip": on_chip.round(1).tolist(),
                }
            )
    mean = np.mean(points, axis=0)
    eye_y = (mean[0, 1] + mean[1, 1]) / 2
    half_gap = (mean[1, 0] - mean[0, 0]) / 2
    mid = CHIP / 2 - 0.5  # centre column in pixel-centre coordinates
    template = np.array(
        [[mid - half_gap, eye_y], [mid + half_gap, eye_y], [mid, mean[2, 1]], [mid, mean[3, 1]]]
    )
    spread = np.std(points, axis=0)
    print(
        json.dumps(
            {
                "faces": len(points),
                "template": template.round(1).tolist(),
                "mean_unsymmetrised": mean.round(2).tolist(),
                "std_px": spread.round(2).tolist(),
                "per_face": report,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
