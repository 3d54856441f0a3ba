"""The frame bundle (issue 16): views prepared by the capture thread are exactly what the stages would make
themselves; the Pi camera's low-resolution stream is asked for at the letterbox's inner size and its
views map faces back to the main picture. picamera2 exists only on the Pi: a stand-in camera hands over
real pictures in the layouts picamera2 documents (BGR main, I420 lores)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pipeline_support import shipped_stages, unit_config

from device.evaluation import fixtures
from device.lab.democlip import hallway
from device.types import Detection, FrameViews, RgbImage
from device.vision.capture import open_source
from device.vision.capture.file import FileSource
from device.vision.capture.picamera2 import Picamera2Source
from device.vision.capture.thread import CaptureThread
from device.vision.detect import FaceDetector, is_grey, letterbox
from device.vision.faces import Stages
from device.vision.motion import MotionGate, downscaled_grey
from device.vision.views import ViewSpec, prepare_views, views_from_lores

SIZE = (640, 480)


@pytest.fixture(scope="module")
def stages() -> Stages:
    return shipped_stages()


@pytest.fixture(scope="module")
def detector(stages: Stages) -> FaceDetector:
    assert isinstance(stages.detector, FaceDetector)
    return stages.detector


def entrance_picture(name: str = "obama.jpg") -> RgbImage:
    """A fixture face on the hallway, the size the camera delivers."""
    frame = hallway(*SIZE)
    photo = fixtures.load_rgb(name)
    scale = 300 / max(photo.shape[:2])
    small = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
    frame[100 : 100 + small.shape[0], 170 : 170 + small.shape[1]] = small
    return frame


def spec_for(detector: FaceDetector) -> ViewSpec:
    return ViewSpec.for_unit(unit_config(), detector.input_size)


def same_faces(first: list[Detection], second: list[Detection]) -> bool:
    return len(first) == len(second) and all(
        a.box == b.box and a.score == b.score and np.array_equal(a.keypoints, b.keypoints)
        for a, b in zip(first, second, strict=True)
    )


def test_views_made_on_the_capture_thread_are_exactly_the_stages_own(detector: FaceDetector) -> None:
    image = entrance_picture()
    views = prepare_views(image, spec_for(detector))
    assert views.detector_input is not None and views.motion_grey is not None
    own = letterbox(image, detector.input_size)
    assert np.array_equal(views.detector_input.tensor, own.tensor)
    assert (views.detector_input.scale_x, views.detector_input.pad_y) == (own.scale_x, own.pad_y)
    assert np.array_equal(views.motion_grey, downscaled_grey(image, unit_config().motion.downscale_width))
    assert views.colourless is is_grey(image) is False
    faces = detector.detect(image, views)
    assert faces and same_faces(faces, detector.detect(image))


def test_the_motion_gate_decides_the_same_on_a_prepared_grey_picture() -> None:
    config = unit_config().motion
    still, moved = hallway(*SIZE), entrance_picture()
    on_frames, on_views = MotionGate(config), MotionGate(config)
    for picture in (still, still, moved, moved):
        grey = downscaled_grey(picture, config.downscale_width)
        assert on_views.update(picture, grey) == on_frames.update(picture)


def test_a_view_of_the_wrong_size_is_not_used(detector: FaceDetector) -> None:
    image = entrance_picture("biden.jpg")
    wrong = FrameViews(detector_input=letterbox(hallway(*SIZE), detector.input_size * 2), colourless=False)
    assert same_faces(detector.detect(image, wrong), detector.detect(image))


def test_a_grey_view_takes_the_detectors_grey_path(detector: FaceDetector) -> None:
    """The grey test travels with the views: a frame said to be colourless is detected as a grey one."""
    grey = np.repeat(cv2.cvtColor(entrance_picture(), cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    views = prepare_views(grey, spec_for(detector))
    assert views.colourless is True
    assert same_faces(detector.detect(grey, views), detector.detect(grey))
    assert detector.takes_grey_path(grey, views)


def i420(image: RgbImage) -> np.ndarray:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420))


def test_the_lores_stream_is_asked_for_at_the_letterboxs_inner_size(detector: FaceDetector) -> None:
    spec = spec_for(detector)
    assert spec.lores_size(640, 480) == (192, 144)
    assert spec.lores_size(1280, 720) == (192, 108)
    camera = FakePicamera2({"main": entrance_picture()[:, :, ::-1]})
    source = Picamera2Source(
        640, 480, 15, False, False, views=spec, camera_factory=lambda: camera, transform=dict
    )
    source.open()
    assert camera.configured["lores"] == {"size": (192, 144), "format": "YUV420"}
    assert camera.configured["main"] == {"size": (640, 480), "format": "RGB888"}


def test_views_from_the_lores_stream_find_the_face_where_the_main_picture_has_it(
    detector: FaceDetector,
) -> None:
    """What the ISP would hand over: the picture scaled to 192x144, in I420; the face found on it maps
    back onto the 640x480 main picture, close to where the software letterbox finds it."""
    image = entrance_picture()
    spec = spec_for(detector)
    lores = i420(np.asarray(cv2.resize(image, spec.lores_size(640, 480), interpolation=cv2.INTER_AREA)))
    views = views_from_lores(image, lores, spec)
    assert views.motion_grey is not None and views.motion_grey.shape == (120, 160)
    assert views.detector_input is not None and views.detector_input.tensor.shape == (192, 192, 3)
    from_lores, from_main = detector.detect(image, views), detector.detect(image)
    assert len(from_lores) == len(from_main) == 1
    corners = np.array(
        [from_lores[0].box.x0, from_lores[0].box.y0, from_lores[0].box.x1, from_lores[0].box.y1]
    )
    expected = np.array([from_main[0].box.x0, from_main[0].box.y0, from_main[0].box.x1, from_main[0].box.y1])
    assert np.abs(corners - expected).max() < 8.0  # px on the main picture: different scalers, same face


def test_a_lores_picture_of_another_size_is_refused(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="letterbox"):
        views_from_lores(entrance_picture(), i420(hallway(160, 120)), spec_for(detector))


class FakeRequest:
    def __init__(self, arrays: dict[str, np.ndarray], log: list[str]) -> None:
        self._arrays = arrays
        self._log = log

    def make_array(self, stream: str) -> np.ndarray:
        self._log.append(f"make_array:{stream}")
        return self._arrays[stream]

    def release(self) -> None:
        self._log.append("release")


class FakePicamera2:
    """The calls the unit makes on picamera2's ``Picamera2``, with real pictures behind them."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.configured: dict[str, Any] = {}
        self.calls: list[str] = []

    def create_video_configuration(self, **streams: Any) -> dict[str, Any]:
        return streams

    def configure(self, configuration: dict[str, Any]) -> None:
        self.configured = configuration

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, stream: str) -> np.ndarray:
        self.calls.append(f"capture_array:{stream}")
        return self.arrays[stream]

    def capture_request(self) -> FakeRequest:
        self.calls.append("capture_request")
        return FakeRequest(self.arrays, self.calls)

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


def test_the_capture_thread_takes_the_pi_cameras_views_from_one_request(detector: FaceDetector) -> None:
    image = entrance_picture()
    spec = spec_for(detector)
    lores = i420(np.asarray(cv2.resize(image, spec.lores_size(640, 480), interpolation=cv2.INTER_AREA)))
    camera = FakePicamera2({"main": np.ascontiguousarray(image[:, :, ::-1]), "lores": lores})
    source = Picamera2Source(
        640, 480, 15, False, False, views=spec, camera_factory=lambda: camera, transform=dict
    )
    capture = CaptureThread(source, views=spec).start()
    frame = capture.get(timeout_s=5)
    capture.stop()
    assert frame is not None and frame.views is not None
    assert np.array_equal(frame.image, image)  # BGR in memory, RGB out
    assert frame.views.motion_grey is not None
    assert np.array_equal(
        frame.views.motion_grey, cv2.resize(lores[:144], (160, 120), interpolation=cv2.INTER_AREA)
    )
    # main and lores of the same request, and the request handed back to the camera
    assert camera.calls[1:4] == ["capture_request", "make_array:main", "make_array:lores"]
    assert camera.calls[4] == "release"
    assert "capture_array:main" not in camera.calls


def test_an_unusable_lores_stream_falls_back_to_views_made_in_software(
    detector: FaceDetector, caplog: pytest.LogCaptureFixture
) -> None:
    """A lores buffer wider than the picture (a padded stride): the capture thread makes the views."""
    image = entrance_picture()
    spec = spec_for(detector)
    padded_stride = np.zeros((216, 256), np.uint8)
    camera = FakePicamera2({"main": np.ascontiguousarray(image[:, :, ::-1]), "lores": padded_stride})
    source = Picamera2Source(
        640, 480, 15, False, False, views=spec, camera_factory=lambda: camera, transform=dict
    )
    source.open()
    with caplog.at_level(logging.WARNING):
        _, first = source.read_with_views(spec)
        _, second = source.read_with_views(spec)
    software = prepare_views(image, spec)
    for views in (first, second):
        assert views.detector_input is not None and software.detector_input is not None
        assert np.array_equal(views.detector_input.tensor, software.detector_input.tensor)
    assert sum("low-resolution stream is not usable" in record.message for record in caplog.records) == 1


def test_a_rotated_pi_camera_gets_no_lores_stream(detector: FaceDetector) -> None:
    """The ISP does not rotate the lores picture: the capture thread makes the views of the turned frame."""
    spec = spec_for(detector)
    config = unit_config(capture={"backend": "picamera2", "rotation": 90}).capture
    source = open_source(config, views=spec)
    inner = source._inner
    assert isinstance(inner, Picamera2Source) and inner.lores_size is None
    upright = open_source(unit_config(capture={"backend": "picamera2"}).capture, views=spec)
    assert isinstance(upright, Picamera2Source) and upright.lores_size == (192, 144)


def test_file_frames_carry_views_made_on_the_capture_thread(tmp_path: Path, detector: FaceDetector) -> None:
    picture = entrance_picture()
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), picture[:, :, ::-1])
    capture = CaptureThread(FileSource(tmp_path), views=spec_for(detector)).start()
    frame = capture.get(timeout_s=5)
    capture.stop()
    assert frame is not None and frame.views is not None and frame.views.detector_input is not None
    assert np.array_equal(
        frame.views.detector_input.tensor, letterbox(frame.image, detector.input_size).tensor
    )
