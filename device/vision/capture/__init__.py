"""The camera seam: frame sources, reconnection, and the capture thread feeding the processing loop.

``open_source(config)``, the one factory, gives a ``FrameSource`` (``source.py``) for the configured
backend, one module each:
- ``file.py``: a video file or a folder of images (demos, tests), optionally looped and paced at ``fps``
  (``pacer.py``);
- ``opencv.py``: a V4L2 device (index or ``/dev/videoN``) or an RTSP/HTTP URL through ``cv2.VideoCapture``;
- ``picamera2.py``: the Raspberry Pi camera through libcamera; the library is imported only when the
  camera is opened, because it exists only on the Pi (from its apt repository).

Every frame carries ``time.monotonic()`` at capture and a per-source sequence number, so a gap in ``seq``
is a dropped frame. Live sources are wrapped in ``ReconnectingSource`` (``reconnect.py``: camera loss ->
reopen with capped exponential backoff, visible in health) and run in a ``CaptureThread`` (``thread.py``)
that keeps only the newest frame in a ``LatestFrameBuffer``: the processing loop never works on a frame
more than one frame old.

Given a ``ViewSpec``, the capture side also prepares each frame's views (``device.vision.views``): the
motion gate's grey picture, the detector's letterbox and its grey test. picamera2 gets them from the
ISP's low-resolution stream; every other source has the capture thread compute them, off the pipeline
thread.
"""

from __future__ import annotations

from device.config import CaptureSection, FileCapture, OpenCvCapture
from device.vision.capture.file import FileSource
from device.vision.capture.opencv import OpenCvSource, opencv_device
from device.vision.capture.picamera2 import Picamera2Source
from device.vision.capture.source import FrameSource, OrientedSource
from device.vision.views import ViewSpec


def open_source(config: CaptureSection, *, views: ViewSpec | None = None) -> FrameSource:
    """The configured camera or file, oriented; not opened yet (``CaptureThread`` opens it).

    ``views``: what the capture thread will prepare; the Pi camera is then asked for a low-resolution
    stream of the right size (unless the picture is rotated, which the ISP cannot do for it)."""
    source: FrameSource
    software_flips = True
    if isinstance(config, FileCapture):
        source = FileSource(config.source, loop=config.loop, fps=config.fps if config.realtime else None)
    elif isinstance(config, OpenCvCapture):
        source = OpenCvSource(opencv_device(config.source), config.width, config.height, config.fps)
    else:
        source = Picamera2Source(
            config.width,
            config.height,
            config.fps,
            config.hflip,
            config.vflip,
            views=None if config.rotation else views,
        )
        software_flips = False  # libcamera flips in the ISP for free
    if config.rotation or (software_flips and (config.hflip or config.vflip)):
        source = OrientedSource(
            source, config.rotation, config.hflip and software_flips, config.vflip and software_flips
        )
    return source
