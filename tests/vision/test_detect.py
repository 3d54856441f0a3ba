"""Face detection on the real fixture photos with the shipped model, and the decoders on known numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from device.config import DetectionSection, ModelsSection
from device.evaluation.fixtures import astronaut_rgb
from device.models.accelerator import InferenceModel, open_model
from device.types import Keypoint
from device.vision.detect import (
    FaceDetector,
    blazeface_anchors,
    decode_blazeface,
    decode_ssd_postprocess,
    is_grey,
    letterbox,
    weighted_nms,
)

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"

# People in each photo, counted by eye (the face-api samples are group photos).
FACES_IN_PHOTO = {
    "obama.jpg": 1,
    "obama2.jpg": 1,
    "obama3.jpg": 1,
    "biden.jpg": 1,
    "obama_partial_face.jpg": 1,  # the face cut by the picture's left edge
    "obama_partial_face2.jpg": 1,
    "sample1.jpg": 3,
    "sample2.jpg": 3,
    "sample3.jpg": 3,
    "sample4.jpg": 4,
    "sample5.jpg": 5,
    "sample6.jpg": 4,
}
PORTRAITS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]


@pytest.fixture(scope="module", params=["float", "int8"])
def detector_model(request: pytest.FixtureRequest) -> InferenceModel:
    """Both shipped CPU files must find the same faces."""
    return open_model(
        ModelsSection(dir=REPO_MODELS, accelerator="cpu", cpu_variant=request.param), "blazeface_full_range"
    )


def detector(model: InferenceModel, **settings: object) -> FaceDetector:
    return FaceDetector(model, DetectionSection.model_validate({"score_threshold": 0.5, **settings}))


@pytest.mark.parametrize("name", sorted(FACES_IN_PHOTO))
def test_finds_every_face_in_the_fixture_photos(detector_model: InferenceModel, load_face, name: str) -> None:  # type: ignore[no-untyped-def]
    faces = detector(detector_model).detect(load_face(name))
    assert len(faces) == FACES_IN_PHOTO[name]
    assert all(0.5 <= face.score <= 1.0 for face in faces)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_finds_the_astronaut(detector_model: InferenceModel) -> None:
    image = astronaut_rgb()
    faces = detector(detector_model).detect(image)
    assert len(faces) == 1
    box = faces[0].box
    # Her face is in the upper middle of the 512x512 picture, about 100 px wide.
    assert 150 < (box.x0 + box.x1) / 2 < 300 and 60 < (box.y0 + box.y1) / 2 < 200
    assert 70 < box.width < 150


@pytest.mark.parametrize("name", PORTRAITS)
def test_keypoints_sit_where_a_face_has_them(detector_model: InferenceModel, load_face, name: str) -> None:  # type: ignore[no-untyped-def]
    (face,) = detector(detector_model).detect(load_face(name))
    points = {kp: face.keypoints[i] for i, kp in enumerate(Keypoint)}
    # The subject's right eye is on the image's left in a frontal photo.
    assert points[Keypoint.RIGHT_EYE][0] < points[Keypoint.NOSE_TIP][0] < points[Keypoint.LEFT_EYE][0]
    assert points[Keypoint.RIGHT_EAR][0] < points[Keypoint.RIGHT_EYE][0]
    assert points[Keypoint.LEFT_EYE][0] < points[Keypoint.LEFT_EAR][0]
    eye_y = (points[Keypoint.RIGHT_EYE][1] + points[Keypoint.LEFT_EYE][1]) / 2
    assert eye_y < points[Keypoint.NOSE_TIP][1] < points[Keypoint.MOUTH][1]
    box = face.box
    for kp in (Keypoint.RIGHT_EYE, Keypoint.LEFT_EYE, Keypoint.NOSE_TIP, Keypoint.MOUTH):
        x, y = points[kp]
        assert box.x0 < x < box.x1 and box.y0 < y < box.y1
    eye_distance = points[Keypoint.LEFT_EYE][0] - points[Keypoint.RIGHT_EYE][0]
    assert 0.25 * box.width < eye_distance < 0.55 * box.width


def test_small_faces_are_left_out(detector_model: InferenceModel, load_face) -> None:  # type: ignore[no-untyped-def]
    image = load_face("obama.jpg")
    (face,) = detector(detector_model).detect(image)
    assert face.box.width < 300
    assert detector(detector_model, min_face_px=300).detect(image) == []


def test_entrance_zone_keeps_only_faces_centred_inside(detector_model: InferenceModel, load_face) -> None:  # type: ignore[no-untyped-def]
    image = load_face("sample5.jpg")
    everyone = detector(detector_model).detect(image)
    left_half = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    inside = detector(detector_model, zone=left_half).detect(image)
    width = image.shape[1]
    expected = [f for f in everyone if (f.box.x0 + f.box.x1) / 2 < width / 2]
    assert 0 < len(inside) < len(everyone)
    assert [f.box for f in inside] == [f.box for f in expected]


def test_detection_is_in_frame_pixels_for_any_aspect_ratio(detector_model: InferenceModel, load_face) -> None:  # type: ignore[no-untyped-def]
    image = load_face("biden.jpg")  # tall portrait
    (full,) = detector(detector_model).detect(image)
    # The same face on a wider black canvas, shifted right by 400 px: the box moves by exactly that.
    height, width = image.shape[:2]
    canvas = np.zeros((height, width + 800, 3), np.uint8)
    canvas[:, 400 : 400 + width] = image
    (shifted,) = detector(detector_model).detect(canvas)
    tolerance = 0.06 * full.box.width  # the face is smaller in the model input, so a little less exact
    assert abs(shifted.box.x0 - 400 - full.box.x0) < tolerance
    assert abs(shifted.box.y0 - full.box.y0) < tolerance
    assert abs(shifted.box.width - full.box.width) < tolerance


def test_rejects_images_that_are_not_rgb_uint8(detector_model: InferenceModel) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        detector(detector_model).detect(np.zeros((100, 100), np.uint8))


def test_letterbox_keeps_aspect_and_maps_back() -> None:
    image = np.full((480, 640, 3), 200, np.uint8)
    boxed = letterbox(image, 192)
    assert boxed.tensor.shape == (192, 192, 3)
    assert (boxed.pad_x, boxed.pad_y) == (0, 24)
    assert boxed.tensor[0, 0].tolist() == [0, 0, 0] and boxed.tensor[96, 96].tolist() == [200, 200, 200]
    corners = boxed.to_frame(np.array([[0.0, 24.0], [192.0, 168.0]], np.float32))
    np.testing.assert_allclose(corners, [[0, 0], [640, 480]], atol=1e-3)
    assert corners.dtype == np.float32  # the detector's keypoints stay float32
    # whole-pixel points map back as floats, not truncated to the nearest integer below
    middle = boxed.to_frame(np.array([[97, 97]]))
    np.testing.assert_allclose(middle, [[97 / 0.3, (97 - 24) / 0.3]])


def test_blazeface_decoder_turns_anchor_offsets_into_pixels() -> None:
    anchors = blazeface_anchors(48)
    assert anchors.shape == (2304, 2)
    regressors = np.zeros((2304, 16), np.float32)
    logits = np.full(2304, -10.0, np.float32)
    cell = 10 * 48 + 20  # row 10, column 20: anchor centre (82, 42) in 192-px input
    logits[cell] = 2.0
    regressors[cell, :4] = [3.0, -2.0, 40.0, 50.0]
    regressors[cell, 4:6] = [-10.0, -5.0]
    boxes, scores, keypoints = decode_blazeface(regressors, logits, anchors, 192, 0.5)
    np.testing.assert_allclose(boxes, [[65.0, 15.0, 105.0, 65.0]], atol=1e-4)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0))], rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 0], [72.0, 37.0], atol=1e-4)
    np.testing.assert_allclose(keypoints[0, 1], [82.0, 42.0], atol=1e-4)


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    keypoints = np.stack([np.full((6, 2), v, np.float32) for v in (0.0, 4.0, 55.0)])
    faces = weighted_nms(boxes, scores, keypoints, 0.3)
    assert [f.score for f in faces] == pytest.approx([0.9, 0.8])
    np.testing.assert_allclose(faces[0].box, [0.25, 0.25, 10.25, 10.25], atol=1e-5)
    np.testing.assert_allclose(faces[0].keypoints, np.full((6, 2), 1.0), atol=1e-5)
    np.testing.assert_allclose(faces[1].box, boxes[2])


def ssd_outputs(order: str) -> list[NDArray[np.float32]]:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]  # ymin, xmin, ymax, xmax
    boxes[0, 1] = [0.5, 0.5, 0.9, 0.8]
    boxes[0, 2] = [0.0, 0.0, 0.1, 0.1]
    classes = np.zeros((1, 10), np.float32)
    scores = np.zeros((1, 10), np.float32)
    scores[0, :3] = [0.95, 0.7, 0.4]
    count = np.array([3.0], np.float32)
    if order == "standard":
        return [boxes, classes, scores, count]
    return [scores, boxes, count, classes]


@pytest.mark.parametrize("order", ["standard", "tf2"])
def test_ssd_postprocess_decoder_reads_boxes_scores_and_count(order: str) -> None:
    faces = decode_ssd_postprocess(ssd_outputs(order), 320, 0.5)
    assert [f.score for f in faces] == pytest.approx([0.95, 0.7])
    np.testing.assert_allclose(faces[0].box, [64.0, 32.0, 192.0, 160.0], atol=1e-4)
    # Placed keypoints: right eye left of left eye, mouth below nose, all inside the box.
    kp = faces[0].keypoints
    assert kp[0, 0] < kp[1, 0] and kp[2, 1] < kp[3, 1]
    assert np.all((kp[:, 0] >= 64) & (kp[:, 0] <= 192) & (kp[:, 1] >= 32) & (kp[:, 1] <= 160))


def test_ssd_count_limits_the_faces_read() -> None:
    outputs = ssd_outputs("standard")
    outputs[3] = np.array([1.0], np.float32)
    assert len(decode_ssd_postprocess(outputs, 320, 0.5)) == 1


def test_ssd_decoder_refuses_other_models() -> None:
    with pytest.raises(ValueError, match="4 outputs"):
        decode_ssd_postprocess([np.zeros((1, 2304, 16), np.float32)], 192, 0.5)


def test_detect_command_draws_the_faces(
    face_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    import json

    import cv2

    from device.cli import main

    out = tmp_path / "annotated.png"
    config = tmp_path / "unit.toml"
    config.write_text(f'[models]\ndir = "{REPO_MODELS}"\naccelerator = "cpu"\ncpu_variant = "int8"\n')
    assert (
        main(
            ["detect", str(face_images["sample5.jpg"]), "--out", str(out), "--json", "--config", str(config)]
        )
        == 0
    )
    faces = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(faces) == 5
    assert all(len(face["keypoints"]) == 6 and 0.6 <= face["score"] <= 1.0 for face in faces)
    drawn = cv2.imread(str(out))
    original = cv2.imread(str(face_images["sample5.jpg"]))
    assert drawn.shape == original.shape
    assert np.count_nonzero(np.any(drawn != original, axis=2)) > 1000  # boxes and points were drawn


def test_detect_command_refuses_a_file_that_is_not_a_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device.cli import main

    bogus = tmp_path / "x.jpg"
    bogus.write_text("not a picture")
    assert main(["detect", str(bogus)]) == 1
    assert "not a decodable image" in capsys.readouterr().err


class SsdModelStandIn:
    """Outputs of an SSD post-process model (as Coral's face SSD gives them) for one known face."""

    name = "ssd_face"
    input_shape = (1, 320, 320, 3)

    def run_pixels(self, pixels, mean, std):  # type: ignore[no-untyped-def]
        assert pixels.shape == (1, 320, 320, 3) and pixels.dtype == np.uint8
        return ssd_outputs("standard")


def test_detector_picks_the_ssd_decoder_by_the_outputs_and_maps_to_the_frame() -> None:
    detector = FaceDetector(SsdModelStandIn(), DetectionSection(min_face_px=8))  # type: ignore[arg-type]
    frame = np.zeros((480, 640, 3), np.uint8)
    faces = detector.detect(frame)
    assert [round(f.score, 2) for f in faces] == [0.95, 0.7]
    # Box [xmin 0.2, ymin 0.1, xmax 0.6, ymax 0.5] of the 320 input; the 640x480 frame is letterboxed
    # with 40 px of padding above (scale 0.5), so in frame pixels: x 128..384, y 0..240.
    box = faces[0].box
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((128.0, 0.0, 384.0, 240.0), abs=0.01)
    assert faces[0].keypoints.shape == (6, 2)


def test_grey_frames_take_the_grey_path_and_colour_frames_do_not(
    detector_model: InferenceModel, load_face
) -> None:  # type: ignore[no-untyped-def]
    colour = load_face("sample4.jpg")
    grey = np.repeat(colour.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    shipped = FaceDetector(detector_model, DetectionSection())
    assert not is_grey(colour) and is_grey(grey)
    assert not shipped.takes_grey_path(colour) and shipped.takes_grey_path(grey)
    assert len(shipped.detect(grey)) == FACES_IN_PHOTO["sample4.jpg"]
    # a NoIR picture with a colour cast is not grey by the test, so `capture.infrared` forces the path
    cast = np.clip(grey.astype(np.int16) + np.array([12, 0, 10]), 0, 255).astype(np.uint8)
    assert not is_grey(cast)
    infrared = FaceDetector(detector_model, DetectionSection(), infrared=True)
    assert infrared.takes_grey_path(cast)


def test_without_the_skin_tint_grey_faces_score_below_the_colour_threshold(
    detector_model: InferenceModel, load_face
) -> None:  # type: ignore[no-untyped-def]
    # the reason for the grey path: on grey sample4 the untinted detector loses faces a tinted one finds
    colour = load_face("sample4.jpg")
    grey = np.repeat(colour.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    floor = DetectionSection(score_threshold=0.05, grey_score_threshold=0.05)
    tinted = sorted(face.score for face in FaceDetector(detector_model, floor).detect(grey))[-4:]
    plain = FaceDetector(detector_model, floor)
    plain_scores = sorted(face.score for face in plain.decode(
        plain.model.run_pixels(letterbox(grey, plain.input_size).tensor[None], 127.5, 127.5), 0.05
    ))[-4:]  # fmt: skip
    assert min(tinted) > min(plain_scores)
