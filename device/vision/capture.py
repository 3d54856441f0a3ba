"""The camera seam: frame sources, reconnection, and the capture thread feeding the processing loop.

``open_source(config)`` gives a ``FrameSource`` for the configured backend:
- ``file``: a video file or a folder of images (demos, tests), optionally looped and paced at ``fps``;
- ``opencv``: a V4L2 device (index or ``/dev/videoN``) or an RTSP/HTTP URL through ``cv2.VideoCapture``;
- ``picamera2``: the Raspberry Pi camera through libcamera; imported only when selected, because it exists
  only on the Pi (from its apt repository).

Every frame carries ``time.monotonic()`` at capture and a per-source sequence number, so a gap in ``seq``
is a dropped frame. Live sources are wrapped in ``ReconnectingSource`` (camera loss -> reopen with capped
exponential backoff, visible in health) and run in a ``CaptureThread`` that keeps only the newest frame in
a ``LatestFrameBuffer``: the processing loop never works on a frame more than one frame old.

Given a ``ViewSpec``, the capture side also prepares each frame's views (``device.vision.views``): the
motion gate's grey picture, the detector's letterbox and its grey test. picamera2 gets them from the
ISP's low-resolution stream; every other source has the capture thread compute them, off the pipeline
thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from device.config import CaptureSection, FileCapture, OpenCvCapture
from device.timing import LatencyRecorder
from device.types import Frame, FrameViews, RgbImage
from device.vision.views import ViewSpec, prepare_views, views_from_lores

log = logging.getLogger(__name__)

T = TypeVar("T")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
INITIAL_BACKOFF_S = 0.5


class CameraError(Exception):
    """The camera could not be opened or stopped delivering frames (a reconnect may help)."""


class EndOfStream(Exception):  # noqa: N818 - an end, not an error
    """A finite source (a file that is not looped) has no more frames."""


class FrameSource(Protocol):
    """A camera or file; ``read`` blocks until the next frame."""

    @property
    def live(self) -> bool:
        """True for cameras (drop frames when behind), False for files (never drop)."""
        ...

    def open(self) -> None: ...

    def read(self) -> RgbImage:
        """The next frame as RGB; raises ``CameraError`` (retryable) or ``EndOfStream``."""
        ...

    def close(self) -> None: ...


def orient(image: RgbImage, rotation: int, hflip: bool, vflip: bool) -> RgbImage:
    """Applies the mounting orientation: clockwise rotation in degrees, then flips."""
    turned = np.rot90(image, k=-(rotation // 90)) if rotation else image
    if hflip:
        turned = turned[:, ::-1]
    if vflip:
        turned = turned[::-1]
    return np.ascontiguousarray(turned)


def bgr_to_rgb(image: np.ndarray[Any, Any]) -> RgbImage:
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2), dtype=np.uint8)
    return np.ascontiguousarray(image[:, :, 2::-1], dtype=np.uint8)


class Pacer:
    """Sleeps so that successive frames are released ``1/fps`` apart (file backend, real-time mode)."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = 1.0 / fps
        self._clock = clock
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is None or now - self._next > self._period:
            self._next = now  # first frame, or we fell behind: restart the schedule instead of bursting
        else:
            time.sleep(max(0.0, self._next - now))
        self._next += self._period


class FileSource:
    """Frames from a video file or a folder of images (sorted by name)."""

    live = False

    def __init__(self, path: Path, *, loop: bool = False, fps: float | None = None) -> None:
        self._path = path
        self._loop = loop
        self._pacer = Pacer(fps) if fps else None
        self._images: list[Path] = []
        self._index = 0
        self._video: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self._path.is_dir():
            self._images = sorted(p for p in self._path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise CameraError(
                    f"{self._path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            self._index = 0
            return
        if not self._path.is_file():
            raise CameraError(f"{self._path}: no such video file or image folder")
        video = cv2.VideoCapture(str(self._path))
        if not video.isOpened():
            raise CameraError(f"{self._path}: cannot be decoded as a video")
        self._video = video

    def read(self) -> RgbImage:
        image = self._next_image()
        if self._pacer is not None:
            self._pacer.wait()
        return image

    def _next_image(self) -> RgbImage:
        if self._images:
            if self._index >= len(self._images):
                if not self._loop:
                    raise EndOfStream
                self._index = 0
            path = self._images[self._index]
            self._index += 1
            decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if decoded is None:
                raise CameraError(f"{path}: cannot be decoded as an image")
            return bgr_to_rgb(decoded)
        if self._video is None:
            raise CameraError("the file source is not open")
        ok, decoded = self._video.read()
        if not ok and self._loop:
            self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, decoded = self._video.read()
        if not ok:
            raise EndOfStream
        return bgr_to_rgb(decoded)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


def opencv_device(source: str) -> int | str:
    """What ``cv2.VideoCapture`` takes for a checked ``capture.source``: an index as int, else the text."""
    return int(source) if source.isdigit() else source


class OpenCvSource:
    """A USB/V4L2 camera or an IP camera stream through OpenCV."""

    live = True

    def __init__(self, source: int | str, width: int, height: int, fps: float) -> None:
        self._source = source
        self._size = (width, height)
        self._fps = fps
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        capture = cv2.VideoCapture(self._source)
        if not capture.isOpened():
            raise CameraError(f"cannot open camera {redact_url(str(self._source))}")
        if isinstance(self._source, int) or str(self._source).startswith("/dev/"):
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
            capture.set(cv2.CAP_PROP_FPS, self._fps)
        # Keep the driver's own queue short so that a slow consumer sees recent frames.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture

    def read(self) -> RgbImage:
        if self._capture is None:
            raise CameraError("camera is not open")
        ok, decoded = self._capture.read()
        if not ok or decoded is None:
            raise CameraError(f"camera {redact_url(str(self._source))} delivered no frame")
        image = bgr_to_rgb(decoded)
        if (image.shape[1], image.shape[0]) != self._size:
            image = np.ascontiguousarray(cv2.resize(image, self._size, interpolation=cv2.INTER_AREA))
        return image

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def redact_url(source: str) -> str:
    """Stream URLs may carry credentials (rtsp://user:pass@host); logs and health must not."""
    return re.sub(r"//[^/@]*@", "//***@", source)


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (lazy import: it exists only on the Pi)."""

    live = True

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        hflip: bool,
        vflip: bool,
        *,
        views: ViewSpec | None = None,
        camera_factory: Callable[[], Any] | None = None,
        transform: Callable[..., Any] | None = None,
    ) -> None:
        self._size = (width, height)
        self._fps = fps
        self._hflip = hflip
        self._vflip = vflip
        self._views = views
        # The low-resolution stream: the letterbox's inner size, YUV420 (what every Pi's ISP can give).
        self.lores_size = views.lores_size(width, height) if views is not None else None
        self._camera_factory = camera_factory
        self._transform = transform
        self._camera: Any = None
        self._lores_refused: str | None = None

    def open(self) -> None:
        camera_factory, transform = self._camera_factory, self._transform
        if camera_factory is None or transform is None:
            try:
                from libcamera import Transform  # type: ignore[import-not-found]
                from picamera2 import Picamera2
            except ImportError as error:
                raise CameraError(
                    f"picamera2 is not available ({error}); on the Pi: `apt install python3-picamera2`"
                ) from None
            camera_factory, transform = Picamera2, Transform
        streams: dict[str, Any] = {"main": {"size": self._size, "format": "RGB888"}}
        if self.lores_size is not None:
            streams["lores"] = {"size": self.lores_size, "format": "YUV420"}
        try:
            camera = camera_factory()
            configuration = camera.create_video_configuration(
                **streams,
                controls={"FrameRate": self._fps},
                transform=transform(hflip=int(self._hflip), vflip=int(self._vflip)),
                buffer_count=2,
            )
            camera.configure(configuration)
            camera.start()
        except Exception as error:  # libcamera raises RuntimeError/IndexError/... when no camera is found
            raise CameraError(f"picamera2 could not start the camera: {error}") from None
        self._camera = camera

    def read(self) -> RgbImage:
        if self._camera is None:
            raise CameraError("camera is not open")
        try:
            array = self._camera.capture_array("main")
        except Exception as error:
            raise CameraError(f"picamera2 capture failed: {error}") from None
        return picamera2_rgb(array)

    def read_with_views(self, spec: ViewSpec) -> tuple[RgbImage, FrameViews]:
        """The main picture and the views from the low-resolution stream of the same request."""
        if self._camera is None:
            raise CameraError("camera is not open")
        if self.lores_size is None or self._lores_refused is not None:
            image = self.read()
            return image, prepare_views(image, spec)
        try:
            request = self._camera.capture_request()
            try:
                main, lores = request.make_array("main"), request.make_array("lores")
            finally:
                request.release()
        except Exception as error:
            raise CameraError(f"picamera2 capture failed: {error}") from None
        image = picamera2_rgb(main)
        try:
            return image, views_from_lores(image, np.asarray(lores, dtype=np.uint8), spec)
        except ValueError as error:
            # e.g. a lores stride wider than the picture: the capture thread prepares the views instead
            self._lores_refused = str(error)
            log.warning(
                "the camera's low-resolution stream is not usable (%s); views made in software", error
            )
            return image, prepare_views(image, spec)

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            except Exception as error:
                log.warning("closing picamera2 failed: %s", error)
            self._camera = None


def picamera2_rgb(array: Any) -> RgbImage:
    # picamera2's "RGB888" is libcamera's naming: the bytes in memory are B, G, R.
    return bgr_to_rgb(np.asarray(array)[:, :, :3])


class OrientedSource:
    """Rotation (and, where the backend cannot flip, flips) applied in software."""

    def __init__(self, inner: FrameSource, rotation: int, hflip: bool, vflip: bool) -> None:
        self._inner = inner
        self._rotation = rotation
        self._hflip = hflip
        self._vflip = vflip

    @property
    def live(self) -> bool:
        return self._inner.live

    def open(self) -> None:
        self._inner.open()

    def read(self) -> RgbImage:
        return orient(self._inner.read(), self._rotation, self._hflip, self._vflip)

    def close(self) -> None:
        self._inner.close()


def backoff_delays(maximum_s: float, initial_s: float = INITIAL_BACKOFF_S) -> Iterator[float]:
    """0.5, 1, 2, 4, ... seconds, capped at ``maximum_s``."""
    delay = min(initial_s, maximum_s)
    while True:
        yield delay
        delay = min(delay * 2.0, maximum_s)


@dataclass(frozen=True)
class CaptureHealth:
    state: str  # "connected", "reconnecting", "ended", "stopped"
    reconnects: int
    last_error: str | None
    next_retry_s: float | None


class ReconnectingSource:
    """Opens the inner source and reopens it after a ``CameraError`` with capped exponential backoff.

    A lost camera never ends the service: it is reported (``health()``) and retried until ``stop()``.
    """

    def __init__(
        self,
        inner: FrameSource,
        max_backoff_s: float,
        *,
        stop_event: threading.Event | None = None,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
    ) -> None:
        self._inner = inner
        self._max_backoff_s = max_backoff_s
        self._initial_backoff_s = initial_backoff_s
        self._stop = stop_event or threading.Event()
        self._lock = threading.Lock()
        self._opened = False
        self._state = "stopped"
        self._reconnects = 0
        self._last_error: str | None = None
        self._next_retry_s: float | None = None

    @property
    def live(self) -> bool:
        return self._inner.live

    def open(self) -> None:
        self._ensure_open()

    def read(self) -> RgbImage:
        return self._read(self._inner.read)

    def read_with_views(self, spec: ViewSpec) -> tuple[RgbImage, FrameViews | None]:
        """The next frame and, when the source makes them itself (the Pi camera's ISP), its views."""
        native: Callable[[ViewSpec], tuple[RgbImage, FrameViews]] | None = getattr(
            self._inner, "read_with_views", None
        )
        if native is None:
            return self._read(self._inner.read), None
        made = native
        return self._read(lambda: made(spec))

    def _read(self, read: Callable[[], T]) -> T:
        while True:
            self._ensure_open()
            try:
                return read()
            except EndOfStream:
                self._set_state("ended")
                raise
            except CameraError as error:
                if not self._inner.live:
                    raise
                log.warning("camera lost: %s", error)
                self._inner.close()
                self._opened = False
                self._record_error(str(error), reconnecting=True)

    def _ensure_open(self) -> None:
        if self._opened:
            return
        delays = backoff_delays(self._max_backoff_s, self._initial_backoff_s)
        while not self._stop.is_set():
            try:
                self._inner.open()
            except CameraError as error:
                if not self._inner.live:
                    raise  # a missing or unreadable file will not come back: fail clearly, do not spin
                delay = next(delays)
                self._record_error(str(error), reconnecting=True, next_retry_s=delay)
                log.warning("camera unavailable (%s); retrying in %.1f s", error, delay)
                if self._stop.wait(delay):
                    break
                continue
            if self._last_error is not None:
                with self._lock:
                    self._reconnects += 1
                log.info("camera connected again")
            self._opened = True
            self._set_state("connected")
            with self._lock:
                self._next_retry_s = None
            return
        raise EndOfStream  # stopped while waiting for the camera

    def _record_error(self, message: str, *, reconnecting: bool, next_retry_s: float | None = None) -> None:
        with self._lock:
            self._last_error = message
            self._next_retry_s = next_retry_s
            if reconnecting:
                self._state = "reconnecting"

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def health(self) -> CaptureHealth:
        with self._lock:
            return CaptureHealth(self._state, self._reconnects, self._last_error, self._next_retry_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._inner.close()
        self._opened = False
        self._set_state("stopped")


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


class LatestFrameBuffer:
    """Hands frames from the capture thread to the processing loop.

    Live sources: holds at most ``capacity`` frames and drops the oldest when full (counted), so the
    consumer always gets the freshest frame. Files (``lossless``): the producer waits instead, so a demo or
    a benchmark processes every frame of the clip.
    """

    def __init__(self, capacity: int = 1, *, lossless: bool = False) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._frames: deque[Frame] = deque()
        self._capacity = capacity
        self._lossless = lossless
        self._condition = threading.Condition()
        self._dropped = 0
        self._closed = False

    @property
    def dropped(self) -> int:
        with self._condition:
            return self._dropped

    def put(self, frame: Frame) -> None:
        with self._condition:
            if self._lossless:
                while len(self._frames) >= self._capacity and not self._closed:
                    self._condition.wait()
            while len(self._frames) >= self._capacity:
                self._frames.popleft()
                self._dropped += 1
            if not self._closed:
                self._frames.append(frame)
            self._condition.notify_all()

    def get(self, timeout_s: float | None = None) -> Frame | None:
        """The oldest held frame; None after ``close()`` once drained, or on timeout."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._frames or self._closed, timeout_s):
                return None
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._condition.notify_all()
            return frame

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed and not self._frames

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class CaptureThread:
    """Reads the source on its own thread and stamps each frame (monotonic ts, seq)."""

    def __init__(
        self,
        source: FrameSource,
        max_backoff_s: float = 30.0,
        *,
        buffer_capacity: int = 1,
        clock: Callable[[], float] = time.monotonic,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        views: ViewSpec | None = None,
        latencies: LatencyRecorder | None = None,
    ) -> None:
        self._stop = threading.Event()
        self._views = views
        self._latencies = latencies  # "views": what preparing them costs the capture thread
        self.source = ReconnectingSource(
            source, max_backoff_s, stop_event=self._stop, initial_backoff_s=initial_backoff_s
        )
        self.buffer = LatestFrameBuffer(buffer_capacity, lossless=not source.live)
        self._clock = clock
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    image, views = self._read()
                except EndOfStream:
                    break
                stamp = self._clock()
                if views is None and self._views is not None:
                    views = self._prepare(image, self._views)  # here, not on the pipeline thread
                self.buffer.put(Frame(image=image, ts=stamp, seq=self._seq, views=views))
                self._seq += 1
        except BaseException as error:  # never die silently: the loop sees it via .error
            log.exception("capture thread failed")
            self.error = error
        finally:
            self.source.close()
            self.buffer.close()

    def _prepare(self, image: RgbImage, spec: ViewSpec) -> FrameViews:
        if self._latencies is None:
            return prepare_views(image, spec)
        with self._latencies.time("views"):
            return prepare_views(image, spec)

    def _read(self) -> tuple[RgbImage, FrameViews | None]:
        """A frame, with its views when the source made them."""
        if self._views is None:
            return self.source.read(), None
        return self.source.read_with_views(self._views)

    def get(self, timeout_s: float | None = None) -> Frame | None:
        return self.buffer.get(timeout_s)

    @property
    def finished(self) -> bool:
        """True once the source ended (or stop was asked) and every buffered frame was taken."""
        return self.buffer.closed

    def health(self) -> dict[str, Any]:
        status = self.source.health()
        return {
            "state": status.state,
            "reconnects": status.reconnects,
            "last_error": None if status.last_error is None else redact_url(status.last_error),
            "next_retry_s": status.next_retry_s,
            "frames": self._seq,
            "dropped_frames": self.buffer.dropped,
        }

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.buffer.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
