"""The texture cue (MiniFASNet V2 + V1SE rebuilt as TFLite) on real images: the public attack samples,
the fixture faces, and refusing a tampered model file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tamper_support import flip_one_bit

from device.config import UnitConfig
from device.evaluation import fixtures
from device.evaluation.pad_models import crop_scale_sweep
from device.models.manifest import ModelFileError
from device.types import Box, Detection, RgbImage
from device.vision.faces import Detector, load_image_rgb, load_stages
from device.vision.pad_texture import (
    BLAZEFACE_CROP_FACTOR,
    INPUT_SIZE,
    TextureCue,
    crop_box,
    open_texture_cue,
    texture_crop,
)

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models"
PAD_SAMPLES = REPO / "tests" / "data" / "pad_samples"
# Real faces the texture CNNs score below the shipped threshold (issue 12: the CNN alone misfires on
# some real photos). At the reference crop scales (2.7 / 4.0) two fixture faces did: sample6.jpg #0
# (P(real) 0.484) and #3 (0.035). With the crop scales re-fitted to BlazeFace's boxes none does; the
# lowest is sample6.jpg #0 at 0.578 float / 0.602 int8 (V2 0.98, V1SE 0.18), a borderline face.
KNOWN_MISFIRES: set[tuple[str, int]] = set()
VARIANTS = ("float", "int8")


def config_for(variant: str, models_dir: Path = MODELS_DIR) -> UnitConfig:
    return UnitConfig.model_validate(
        {"models": {"dir": str(models_dir), "accelerator": "cpu", "cpu_variant": variant}}
    )


@pytest.fixture(scope="module")
def detector() -> Detector:
    return load_stages(config_for("float")).detector


@pytest.fixture(scope="module", params=VARIANTS)
def cue(request: pytest.FixtureRequest) -> TextureCue:
    return open_texture_cue(config_for(request.param))


def largest(detector: Detector, image: RgbImage) -> Detection:
    faces = sorted(detector.detect(image), key=lambda d: d.box.area, reverse=True)
    assert faces, "BlazeFace should find the face"
    return faces[0]


@pytest.mark.parametrize(
    ("name", "bona_fide"), [("image_F1", False), ("image_F2", False), ("image_T1", True)]
)
def test_public_samples_print_and_screen_fail_live_passes(
    cue: TextureCue, detector: Detector, name: str, bona_fide: bool
) -> None:
    image = load_image_rgb(PAD_SAMPLES / f"{name}.jpg")
    p_real = cue.p_real(image, largest(detector, image).box)
    threshold = UnitConfig().liveness.texture_threshold
    assert (p_real >= threshold) is bona_fide, f"{name}: P(real) {p_real:.3f}, threshold {threshold}"
    # and by a wide margin, not by a hair
    assert abs(p_real - threshold) > 0.3


@pytest.mark.slow  # 2.4 s or more here: make test-fast stays under 3 minutes
def test_every_fixture_face_passes_except_the_known_misfires(
    cue: TextureCue, detector: Detector, load_face
) -> None:  # type: ignore[no-untyped-def]
    threshold = UnitConfig().liveness.texture_threshold
    failing: dict[tuple[str, int], float] = {}
    images = {name: load_face(name) for name in fixtures.FACE_IMAGES}
    images["astronaut"] = fixtures.astronaut_rgb()
    faces = 0
    for name, image in images.items():
        for index, detection in enumerate(sorted(detector.detect(image), key=lambda d: -d.box.area)):
            faces += 1
            p_real = cue.p_real(image, detection.box)
            if p_real < threshold:
                failing[(name, index)] = round(p_real, 3)
    assert faces >= 25  # 28 with the shipped detector
    assert set(failing) == KNOWN_MISFIRES, f"below {threshold}: {failing}"


@pytest.mark.slow
def test_the_blazeface_crop_scale_beats_the_reference_scale_on_real_faces() -> None:
    # The re-fit in device/vision/pad_texture.py: fewer bona fide crops below 0.5 than at the
    # reference scales, and the print and screen samples still far below 0.5.
    sweep = crop_scale_sweep(MODELS_DIR, [BLAZEFACE_CROP_FACTOR, 1.0])["sweep"]
    fitted, reference = sweep[f"{BLAZEFACE_CROP_FACTOR:.2f}"], sweep["1.00"]

    def misses(entry: dict[str, object]) -> int:
        return int(str(entry["jittered_bona_fide_below_0.5"]).split("/")[0])

    assert misses(fitted) * 4 <= misses(reference)
    assert misses(fitted) <= 3
    assert fitted["jittered_attack_p_real_max"] < 0.3
    assert fitted["fused"]["bona_fide_below_threshold"] == []  # type: ignore[index]


def test_int8_agrees_with_float_on_the_samples_and_fixtures(detector: Detector, load_face) -> None:  # type: ignore[no-untyped-def]
    cues = {variant: open_texture_cue(config_for(variant)) for variant in VARIANTS}
    images = [load_image_rgb(path) for path in sorted(PAD_SAMPLES.glob("*.jpg"))]
    images += [load_face(name) for name in ("obama.jpg", "biden.jpg", "sample6.jpg")]
    differences = []
    for image in images:
        for detection in detector.detect(image):
            scores = [cues[v].p_real(image, detection.box) for v in VARIANTS]
            differences.append(abs(scores[0] - scores[1]))
    assert len(differences) >= 9
    assert max(differences) < 0.15


def test_each_model_sees_its_own_crop_of_bgr_pixels() -> None:
    # A frame whose left half is red and right half blue (RGB): the crop must be BGR, so blue first.
    image = np.zeros((200, 300, 3), np.uint8)
    image[:, :150] = (255, 0, 0)
    image[:, 150:] = (0, 0, 255)
    crop = texture_crop(image, Box(40, 60, 100, 120), 1.0)
    assert crop.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert tuple(crop[40, 40]) == (0, 0, 255)  # red, written B, G, R
    wide = texture_crop(image, Box(120, 60, 180, 120), 2.0)
    assert tuple(wide[40, 5]) == (0, 0, 255) and tuple(wide[40, 75]) == (255, 0, 0)


def test_crop_is_scaled_about_the_centre_then_shifted_inside_the_image() -> None:
    # centred face: scaled about its centre
    assert crop_box(Box(100, 100, 140, 140), 400, 400, 2.0) == (80, 80, 161, 161)
    # near the top-left corner: the crop keeps its size and is shifted inside, not cut
    x0, y0, x1, y1 = crop_box(Box(0, 0, 40, 40), 400, 400, 2.7)
    assert (
        (x0, y0) == (0, 0) and x1 - x0 == pytest.approx(109, abs=1) and y1 - y0 == pytest.approx(109, abs=1)
    )
    # a scale the image cannot hold is reduced to what fits (here by the height)
    x0, y0, x1, y1 = crop_box(Box(80, 40, 120, 80), 400, 120, 4.0)
    assert (y0, y1) == (0, 120) and x1 - x0 == pytest.approx(120, abs=1)


def test_bad_input_is_refused_not_crashed(cue: TextureCue) -> None:
    with pytest.raises(ValueError):
        cue.p_real(np.zeros((10, 10), np.uint8), Box(0, 0, 5, 5))
    with pytest.raises(ValueError):
        cue.p_real(np.zeros((100, 100, 3), np.uint8), Box(float("nan"), 0, 5, 5))
    # a degenerate box still gives a probability (the crop is clamped into the image)
    p_real = cue.p_real(np.zeros((100, 100, 3), np.uint8), Box(99, 99, 99, 99))
    assert 0.0 <= p_real <= 1.0


def copy_models(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS_DIR, target, ignore=shutil.ignore_patterns("build", "source", "*.md"))
    return target


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tampered_texture_model_is_refused(tmp_path: Path, variant: str) -> None:
    models_dir = copy_models(tmp_path)
    path = models_dir / "minifasnet" / f"minifasnet_v1se_{variant}.tflite"
    flip_one_bit(path)
    with pytest.raises(ModelFileError, match="does not match the manifest"):
        open_texture_cue(config_for(variant, models_dir))


def test_a_missing_texture_model_is_refused(tmp_path: Path) -> None:
    models_dir = copy_models(tmp_path)
    (models_dir / "minifasnet" / "minifasnet_v2_float.tflite").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        open_texture_cue(config_for("float", models_dir))
    manifest = json.loads((models_dir / "manifest.json").read_text())
    del manifest["models"]["minifasnet_v1se"]
    (models_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="not in"):
        open_texture_cue(config_for("int8", models_dir))
