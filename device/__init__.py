"""Entrance camera: on-unit face recognition that publishes decisions, never biometrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("entrance-camera")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

APP_NAME = "entrance-camera"
