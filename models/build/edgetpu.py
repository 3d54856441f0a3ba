"""Compile every shipped int8 model for the Edge TPU and record the result in models/manifest.json.

Run by `make edgetpu-models`. Needs Coral's ``edgetpu_compiler`` (x86-64 Debian/Ubuntu host with Coral's
apt repository); without it, exits with a message saying so and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
COMPILER = "edgetpu_compiler"


def main() -> int:
    compiler = shutil.which(COMPILER)
    if compiler is None:
        print(
            f"error: {COMPILER} not found. It exists only for x86-64 Linux hosts: install the package "
            "'edgetpu-compiler' from Coral's apt repository there, then run `make edgetpu-models` again. "
            "The unit itself never compiles; without compiled files it runs the CPU files.",
            file=sys.stderr,
        )
        return 1
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    manifest_path = MODELS / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["models"].items():
        int8 = entry.get("files", {}).get("int8")
        if not int8:
            continue
        source = MODELS / int8["path"]
        with tempfile.TemporaryDirectory() as work:
            subprocess.run([compiler, "-s", "-o", work, str(source)], check=True)
            produced = Path(work) / f"{source.stem}_edgetpu.tflite"
            target = source.with_name(produced.name)
            shutil.copyfile(produced, target)
        data = target.read_bytes()
        entry["files"]["edgetpu"] = {
            "path": str(target.relative_to(MODELS)),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "compiler": version,
            "from_int8_sha256": int8["sha256"],
        }
        print(f"{name}: compiled {target}")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
