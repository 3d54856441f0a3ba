"""Entrance camera: on-unit face recognition that publishes decisions, never biometrics."""

import os
from importlib.metadata import PackageNotFoundError, version

# Before numpy is imported anywhere: the unit's matrix products are small (a few embeddings against the
# gallery), where waking BLAS worker threads costs more than it saves (10k-template match 0.7 ms on one
# thread, 1-16 ms with two on a busy 2-core machine) and the threads compete with TFLite's own.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    __version__ = version("entrance-camera")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

APP_NAME = "entrance-camera"
