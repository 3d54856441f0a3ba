"""The camera seam on real files and real OpenCV; a flaky camera is simulated only where no camera exists."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import ConfigError, OpenCvCapture, parse_config
from device.types import Frame, RgbImage
from device.vision.capture.file import FileSource
from device.vision.capture.opencv import OpenCvSource, opencv_device, redact_url
from device.vision.capture.picamera2 import Picamera2Source
from device.vision.capture.reconnect import ReconnectingSource, backoff_delays
from device.vision.capture.source import CameraError, EndOfStream, orient
from device.vision.capture.thread import CaptureThread, LatestFrameBuffer


def write_video(path: Path, frames: list[RgbImage], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> RgbImage:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = rgb
    return image


def test_a_folder_of_images_is_read_in_name_order_as_rgb(
    tmp_path: Path, face_images: dict[str, Path]
) -> None:
    for index, name in enumerate(["obama.jpg", "biden.jpg"]):
        (tmp_path / f"{index:02d}.jpg").write_bytes(face_images[name].read_bytes())
    source = FileSource(tmp_path)
    source.open()
    first, second = source.read(), source.read()
    with pytest.raises(EndOfStream):
        source.read()
    assert first.shape == (1137, 910, 3)
    assert second.shape == (2204, 970, 3)
    expected = cv2.imread(str(face_images["obama.jpg"]))[:, :, ::-1]
    np.testing.assert_array_equal(first, expected)


def test_a_video_file_gives_rgb_frames_and_can_loop(tmp_path: Path) -> None:
    red, blue = solid((220, 20, 20)), solid((20, 20, 220))
    video = write_video(tmp_path / "clip.avi", [red, blue, red])
    source = FileSource(video, loop=True)
    source.open()
    frames = [source.read() for _ in range(5)]
    source.close()
    reds = [frame.mean(axis=(0, 1))[0] > 150 for frame in frames]
    assert reds == [True, False, True, True, False]


def test_capture_thread_stamps_monotonic_time_and_sequence_and_ends_with_the_file(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", [solid((10 * i, 0, 0)) for i in range(12)])
    capture = CaptureThread(FileSource(video)).start()
    frames: list[Frame] = []
    while (frame := capture.get(timeout_s=5)) is not None:
        frames.append(frame)
    assert [frame.seq for frame in frames] == list(range(12))  # a file source never drops frames
    assert all(b.ts >= a.ts for a, b in itertools.pairwise(frames))
    assert capture.finished
    assert capture.health()["dropped_frames"] == 0


def test_realtime_file_pacing_keeps_the_configured_rate(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", [solid((0, 0, 0))] * 6)
    source = FileSource(video, fps=50.0)
    source.open()
    start = time.monotonic()
    for _ in range(6):
        source.read()
    assert time.monotonic() - start >= 5 / 50 * 0.9


def test_latest_frame_buffer_drops_the_oldest_and_counts_it() -> None:
    buffer = LatestFrameBuffer(capacity=1)
    image = solid((0, 0, 0))
    for seq in range(5):
        buffer.put(Frame(image, float(seq), seq))
    frame = buffer.get(timeout_s=0)
    assert frame is not None and frame.seq == 4
    assert buffer.dropped == 4
    assert buffer.get(timeout_s=0.01) is None


def test_lossless_buffer_makes_the_producer_wait_instead_of_dropping() -> None:
    buffer = LatestFrameBuffer(capacity=1, lossless=True)
    image = solid((0, 0, 0))

    def produce() -> None:
        for seq in range(20):
            buffer.put(Frame(image, float(seq), seq))
        buffer.close()

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while (frame := buffer.get(timeout_s=5)) is not None:
        received.append(frame.seq)
    producer.join()
    assert received == list(range(20))
    assert buffer.dropped == 0


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = backoff_delays(maximum_s=5.0, initial_s=0.5)
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


class FlakyCamera:
    """Stands in for a camera (none exists on this machine): fails to open N times, then loses frames."""

    live = True

    def __init__(self, failed_opens: int, frames_before_loss: int) -> None:
        self.failed_opens = failed_opens
        self.frames_before_loss = frames_before_loss
        self.opens = 0
        self.reads = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.failed_opens:
            raise CameraError("no camera on /dev/video0")

    def read(self) -> RgbImage:
        self.reads += 1
        if self.reads == self.frames_before_loss + 1:
            raise CameraError("camera delivered no frame")
        return solid((0, 0, 0))

    def close(self) -> None:
        pass


def test_a_lost_camera_is_reopened_with_backoff_and_reported() -> None:
    camera = FlakyCamera(failed_opens=3, frames_before_loss=2)
    source = ReconnectingSource(camera, max_backoff_s=0.04, initial_backoff_s=0.01)
    for _ in range(4):  # 2 frames, loss, reopen, 2 more frames
        source.read()
    status = source.health()
    assert camera.opens == 5
    assert status.state == "connected"
    assert status.reconnects == 2
    assert status.last_error == "camera delivered no frame"


def test_real_opencv_backend_without_a_camera_reports_reconnecting_in_health() -> None:
    capture = CaptureThread(
        OpenCvSource("/dev/video97", 640, 480, 15), max_backoff_s=0.5, initial_backoff_s=0.05
    ).start()
    deadline = time.monotonic() + 10
    while capture.health()["state"] != "reconnecting" and time.monotonic() < deadline:
        time.sleep(0.02)
    health = capture.health()
    capture.stop()
    assert health["state"] == "reconnecting"
    assert "video97" in health["last_error"]
    assert health["next_retry_s"] is not None and health["next_retry_s"] <= 0.5


def test_a_missing_file_source_fails_clearly_instead_of_retrying(tmp_path: Path) -> None:
    capture = CaptureThread(FileSource(tmp_path / "nope.mp4")).start()
    assert capture.get(timeout_s=5) is None
    assert isinstance(capture.error, CameraError)
    assert "no such video file" in str(capture.error)


def test_picamera2_is_imported_only_when_used() -> None:
    code = "import device.vision.capture, sys; print('picamera2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    with pytest.raises(CameraError, match="picamera2"):
        Picamera2Source(640, 480, 15, False, False).open()


def test_opencv_sources_are_checked_by_the_config_and_handed_to_opencv_as_index_or_text() -> None:
    def device_of(source: str) -> int | str:
        capture = parse_config({"capture": {"backend": "opencv", "source": source}}).capture
        assert isinstance(capture, OpenCvCapture)
        return opencv_device(capture.source)

    assert device_of("0") == 0
    assert device_of("") == 0  # as before the backends had their own sections: the first camera
    assert device_of("/dev/video2") == "/dev/video2"
    assert device_of("rtsp://cam.local/stream") == "rtsp://cam.local/stream"
    with pytest.raises(ConfigError, match=r"capture\.source"):
        device_of("webcam please")


def test_credentials_in_stream_urls_are_redacted() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"


def test_orientation_rotates_clockwise_and_flips() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255  # top-left marker
    turned = orient(image, 90, False, False)
    assert turned.shape == (3, 2, 3)
    assert turned[0, 1, 0] == 255  # top-left moves to top-right on a clockwise turn
    assert orient(image, 0, True, False)[0, 2, 0] == 255
    assert orient(image, 0, False, True)[1, 0, 0] == 255
    assert orient(image, 180, False, False)[1, 2, 0] == 255
