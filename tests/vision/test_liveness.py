"""The PAD stage: its cues on real and rendered pictures, the fusion rules, and the public samples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from device.config import UnitConfig
from device.evaluation import fixtures
from device.lab.padattacks import RenderParams, halftone, still_attack, subpixel_screen
from device.types import Box, RgbImage
from device.vision import liveness
from device.vision.face_flow import Correspondence
from device.vision.faces import Detector, load_image_rgb, load_stages
from device.vision.liveness import (
    ABSTAIN,
    LATTICE_RATIO,
    NOT_CHECKED,
    SPECTRUM_FACE_SIDE,
    Assurance,
    Cue,
    CueResult,
    LivenessStage,
    PadSample,
    blink_result,
    frame_edge_sides,
    fuse,
    geometry_result,
    infrared_result,
    is_framed,
    lattice_ratio,
    open_liveness,
    pad_sample,
    spectrum_peak_ratio,
    spectrum_result,
)

REPO = Path(__file__).resolve().parents[2]
PAD_SAMPLES = REPO / "tests" / "data" / "pad_samples"
PARAMS = RenderParams(
    halftone_period=4, paper_white=240.0, border=0.1, tilt=0.05, gradient=0.2, gamma=1.0, glare=0.1, jpeg=85
)
# A card held level in even light: the one trait a test varies is the only one that moves.
PLAIN_CARD = RenderParams(
    halftone_period=4, paper_white=235.0, border=0.1, tilt=0.0, gradient=0.0, gamma=1.0, glare=0.0, jpeg=90
)


def shipped_config() -> UnitConfig:
    """The shipped settings, with the models from the repo on the CPU."""
    return UnitConfig.model_validate({"models": {"dir": str(REPO / "models"), "accelerator": "cpu"}})


@pytest.fixture(scope="module")
def detector() -> Detector:
    return load_stages(shipped_config()).detector


@pytest.fixture(scope="module")
def stage() -> LivenessStage:
    opened = open_liveness(shipped_config())
    assert opened is not None
    return opened


def attack_sample(detector: Detector, photo_name: str, species: str, params: RenderParams) -> PadSample:
    """A fixture photo rendered as an attack instrument held up in the entrance, cut as PAD keeps it."""
    photo = fixtures.load_rgb(photo_name)
    attack = still_attack(photo, largest_box(detector, photo), species, params)
    return pad_sample(attack, largest_box(detector, attack))


def largest_box(detector: Detector, image: RgbImage) -> Box:
    faces = detector.detect(image)
    assert faces, "no face found"
    return max(faces, key=lambda face: face.box.area).box


@pytest.mark.parametrize(
    ("name", "live"), [("image_F1.jpg", False), ("image_F2.jpg", False), ("image_T1.jpg", True)]
)
@pytest.mark.slow
def test_public_samples_at_shipped_settings(
    name: str, live: bool, detector: Detector, stage: LivenessStage
) -> None:
    image = load_image_rgb(PAD_SAMPLES / name)
    verdict = stage.still(image, largest_box(detector, image))
    assert verdict.passed is live
    if not live:
        assert verdict.reasons(), "a failed face names the cues that failed it"


def test_mode_off_opens_no_stage() -> None:
    config = UnitConfig.model_validate({"liveness": {"mode": "off"}})
    assert open_liveness(config) is None


def test_fixture_photos_pass(detector: Detector, stage: LivenessStage) -> None:
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "sample1.jpg"):
        image = fixtures.load_rgb(name)
        assert stage.still(image, largest_box(detector, image)).passed is True, name


def test_a_printed_photo_with_its_border_fails(detector: Detector, stage: LivenessStage) -> None:
    photo = fixtures.load_rgb("obama.jpg")
    attack = still_attack(photo, largest_box(detector, photo), "print", PARAMS)
    verdict = stage.still(attack, largest_box(detector, attack))
    assert verdict.passed is False


def test_frame_edges_see_a_border_around_the_face_and_not_a_plain_background() -> None:
    scene = np.full((400, 400, 3), 120, np.uint8)
    box = Box(160, 150, 240, 250)
    plain = frame_edge_sides(scene, box)
    framed = scene.copy()
    cv2.rectangle(framed, (110, 90), (290, 320), (250, 250, 250), 3)
    assert plain == frozenset()
    assert {"left", "right", "top", "bottom"} <= frame_edge_sides(framed, box)
    assert is_framed(frame_edge_sides(framed, box))
    door = scene.copy()
    cv2.line(door, (120, 20), (120, 380), (40, 30, 20), 3)  # one edge (a door frame) is no frame
    assert not is_framed(frame_edge_sides(door, box))


@pytest.mark.parametrize("name", ["biden.jpg", "obama.jpg"])
@pytest.mark.parametrize("tilt", [0.08, 0.12])
def test_frame_edges_see_the_border_of_a_card_held_at_an_angle(
    name: str, tilt: float, detector: Detector
) -> None:
    # a card turned away a little: its top and bottom edges run a few degrees off level and must still
    # count as whole lines (1-px/1-degree Hough bins split them into pieces too short to count)
    sample = attack_sample(detector, name, "print", replace(PLAIN_CARD, tilt=tilt))
    assert is_framed(frame_edge_sides(sample.context, sample.box))


def test_frame_edges_count_a_card_edge_that_runs_through_the_face_box_side() -> None:
    # a face at the photo's edge: the card's left edge lies a little inside the face box
    scene = np.full((400, 400, 3), 120, np.uint8)
    box = Box(160, 150, 240, 250)
    cv2.rectangle(scene, (168, 20), (330, 380), (250, 250, 250), 3)  # 8 px = 8 % of the side inside
    sides = frame_edge_sides(scene, box)
    assert {"left", "right"} <= sides and is_framed(sides)
    deep = np.full((400, 400, 3), 120, np.uint8)
    cv2.line(deep, (200, 20), (200, 380), (250, 250, 250), 3)  # through the middle of the face: no side
    assert not {"left", "right"} & frame_edge_sides(deep, box)


def test_spectrum_sees_halftone_and_subpixel_grids_but_not_the_photo() -> None:
    # the face at the size the cue judges it (a larger one is shrunk first, where 4-px dots do not survive)
    full = fixtures.load_rgb("obama.jpg")
    scale = SPECTRUM_FACE_SIDE / max(full.shape[:2])
    photo = np.asarray(cv2.resize(full, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.uint8)
    height, width = photo.shape[:2]
    box = Box(0, 0, width, height)
    plain = spectrum_peak_ratio(photo, box)
    printed = spectrum_peak_ratio(halftone(photo, 4, 240.0), box)
    screen = spectrum_peak_ratio(subpixel_screen(photo, 3, 1.0, 240.0), box)
    assert plain is not None and printed is not None and screen is not None
    assert plain < 40.0 < min(printed, screen)


def test_lattice_sees_a_square_grid_but_not_stripes_running_one_way() -> None:
    rng = np.random.default_rng(5)
    texture = rng.normal(128, 12, (121, 121))  # skin-like noise: no structure at all
    yy, xx = np.mgrid[0:121, 0:121]
    square = texture + 10 * (np.cos(2 * np.pi * xx / 2.6) + np.cos(2 * np.pi * yy / 2.6))
    stripes = texture + 20 * np.cos(2 * np.pi * yy / 2.6)  # blinds or a striped shirt: one direction only
    box = Box(0, 0, 121, 121)

    def ratio(grey: NDArray[np.float64]) -> float:
        value = lattice_ratio(np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2), box)
        assert value is not None
        return value

    assert ratio(square) > LATTICE_RATIO > max(ratio(stripes), ratio(texture))


def test_the_spectrum_cue_fails_a_cut_out_print_the_peak_ratio_alone_lets_through(detector: Detector) -> None:
    # a printed head cut out along its outline (no border): the halftone, aliased by the camera, is a
    # lattice too weak for the isolated-peak test but present in both directions
    sample = attack_sample(detector, "obama3.jpg", "cutout", replace(PLAIN_CARD, jpeg=85))
    photo = fixtures.load_rgb("obama3.jpg")
    peak = spectrum_peak_ratio(sample.context, sample.box)
    assert peak is not None and peak < 40.0
    verdict = spectrum_result([peak], [lattice_ratio(sample.context, sample.box)])
    assert verdict.passed is False and verdict.detail["lattice_ratio"] > LATTICE_RATIO
    photo_sample = pad_sample(photo, largest_box(detector, photo))
    live = spectrum_result(
        [spectrum_peak_ratio(photo_sample.context, photo_sample.box)],
        [lattice_ratio(photo_sample.context, photo_sample.box)],
    )
    assert live.passed is True


def test_spectrum_abstains_on_a_tiny_face() -> None:
    assert spectrum_peak_ratio(np.zeros((30, 30, 3), np.uint8), Box(0, 0, 30, 30)) is None


def mesh_from(points_3d: NDArray[np.float64], yaw: float, shift: float) -> NDArray[np.float32]:
    """468 points projected after a yaw rotation (orthographic) and a shift."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    x = points_3d[:, 0] * cos + points_3d[:, 2] * sin
    projected = np.column_stack([x + 300 + shift, points_3d[:, 1] + 200, points_3d[:, 2]])
    return projected.astype(np.float32)


def face_points(depth: float) -> NDArray[np.float64]:
    rng = np.random.default_rng(3)
    xy = rng.uniform(-60, 60, (468, 2))
    z = depth * (1.0 - (xy[:, 0] ** 2 + xy[:, 1] ** 2) / 7200.0) * 60
    points = np.column_stack([xy, z])
    points[33] = [-30, -10, 0]  # the eye corners used for scale
    points[263] = [30, -10, 0]
    return points


def followed(points_3d: NDArray[np.float64], yaw: float, shift: float) -> list[Correspondence]:
    """The points seen straight on, then after a turn by ``yaw`` and a slide by ``shift``."""
    return [Correspondence(mesh_from(points_3d, 0.0, 0)[:, :2], mesh_from(points_3d, yaw, shift)[:, :2])]


EYE_DISTANCE = 60.0  # face_points puts the eye corners 60 px apart


def test_geometry_calls_a_turning_head_live_and_a_turning_photo_flat() -> None:
    live = geometry_result(followed(face_points(depth=1.0), 0.6, 10), EYE_DISTANCE)
    flat = geometry_result(followed(face_points(depth=0.0), 0.6, 10), EYE_DISTANCE)
    assert live.passed is True
    assert flat.passed is False


def test_geometry_abstains_when_the_face_only_slid_sideways() -> None:
    assert geometry_result(followed(face_points(depth=1.0), 0.0, 25), EYE_DISTANCE).passed is None


def test_geometry_abstains_when_nothing_could_be_followed() -> None:
    assert geometry_result([], EYE_DISTANCE).passed is None


def eyes_mesh(openness: float) -> NDArray[np.float32]:
    from device.vision.face_mesh import LEFT_EYE_CONTOUR, RIGHT_EYE_CONTOUR

    mesh = np.zeros((468, 3), np.float32)
    for contour, cx in ((RIGHT_EYE_CONTOUR, 100.0), (LEFT_EYE_CONTOUR, 160.0)):
        for position, index in enumerate(contour):
            angle = np.pi * position / 8  # 0 at one corner, pi at the other (index 8), back above
            mesh[index] = [cx - 15 * np.cos(angle), 100 + 15 * openness * np.sin(angle), 0]
    return mesh


def test_a_blink_is_evidence_for_live_and_no_blink_proves_nothing() -> None:
    blink = blink_result([eyes_mesh(0.4), eyes_mesh(0.05), eyes_mesh(0.4)])
    steady = blink_result([eyes_mesh(0.4), eyes_mesh(0.4)])
    assert blink.passed is True
    assert steady.passed is None


def test_fusion_any_veto_fails_and_blink_never_rejects_nor_rescues() -> None:
    good, bad = CueResult(0.9, True), CueResult(0.1, False)
    assert fuse({Cue.TEXTURE: good, Cue.SPECTRUM: good}).passed is True
    failed = fuse({Cue.TEXTURE: good, Cue.FRAME_EDGES: bad, Cue.BLINK: CueResult(1.0, True)})
    assert failed.passed is False and failed.reasons() == ("pad_frame_edges",)
    assert fuse({Cue.TEXTURE: ABSTAIN, Cue.BLINK: CueResult(1.0, True)}).passed is None
    assert fuse({Cue.TEXTURE: good, Cue.BLINK: CueResult(0.0, False)}).passed is True


def test_assurance_is_attack_on_a_veto_pass_on_evidence_of_life_and_uncertain_without_either() -> None:
    good, bad = CueResult(0.9, True), CueResult(0.1, False)
    assert fuse({Cue.TEXTURE: good, Cue.SPECTRUM: good}).assurance is Assurance.LIVE
    assert fuse({Cue.TEXTURE: good, Cue.FRAME_EDGES: bad}).assurance is Assurance.ATTACK
    # no border, no dots, and the texture CNN abstained (a grey face): nothing saw a person
    assert (
        fuse({Cue.TEXTURE: ABSTAIN, Cue.SPECTRUM: good, Cue.FRAME_EDGES: good}).assurance
        is Assurance.UNCERTAIN
    )
    # ... until the face turned in depth, or blinked
    assert fuse({Cue.TEXTURE: ABSTAIN, Cue.SPECTRUM: good, Cue.GEOMETRY: good}).assurance is Assurance.LIVE
    assert fuse({Cue.TEXTURE: ABSTAIN, Cue.BLINK: CueResult(1.0, True)}).assurance is Assurance.LIVE
    assert fuse({Cue.TEXTURE: ABSTAIN}).outcome().assurance == "uncertain"
    assert NOT_CHECKED.outcome().assurance is None  # no PAD ran: no claim either way


def test_infrared_check_rejects_a_flat_face_and_accepts_a_textured_one() -> None:
    rng = np.random.default_rng(0)
    textured = rng.integers(40, 200, (200, 200, 3), dtype=np.uint8)
    flat = np.full((200, 200, 3), 90, np.uint8)
    box = Box(50, 50, 150, 150)
    assert infrared_result([pad_sample(textured, box, infrared=True)]).passed is True
    assert infrared_result([pad_sample(flat, box, infrared=True)]).passed is False
    assert infrared_result([pad_sample(flat, box)]).passed is None  # not an IR frame: abstains


def test_pad_sample_keeps_the_face_context_only() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    sample = pad_sample(image, Box(300, 200, 340, 240), np.array([[310, 215], [330, 215]], np.float32))
    assert sample.context.shape[0] < 480 and sample.context.shape[1] < 640
    assert sample.eyes is not None
    assert sample.box.x0 + sample.origin[0] == 300


def blotched_scene(seed: int) -> RgbImage:
    """Organic blotches all round (floral wallpaper, knitwear) and a face-coloured oval in the middle."""
    noise = cv2.GaussianBlur(
        np.random.default_rng(seed).normal(0, 1, (400, 400)).astype(np.float32), (0, 0), 2.5
    )
    scene = np.repeat(np.where(noise > 0, 200, 60).astype(np.uint8)[..., None], 3, axis=2)
    cv2.ellipse(scene, (200, 200), (50, 60), 0, 0, 360, (190, 150, 130), -1)
    return np.ascontiguousarray(scene)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_frame_edges_are_not_assembled_from_a_patterned_background(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hough strings a pattern's edge pixels into long "lines"; their gradients point every way, a
    # border's all point across it. Without that check the pattern frames the face (a real person rejected).
    scene, box = blotched_scene(seed), Box(150, 150, 250, 250)
    assert not is_framed(frame_edge_sides(scene, box))
    monkeypatch.setattr(liveness, "EDGE_MIN_SUPPORT", 0.0)
    assert is_framed(frame_edge_sides(scene, box))


def test_a_high_resolution_face_is_judged_at_the_scale_of_the_unit_s_faces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a phone photo's face of ~1000 px carries its sensor's and JPEG's fine periodic patterns: read at full
    # size they are a square lattice (real selfies 56 to 26,050); shrunk to the face size the cue was set on,
    # they are gone, while a halftone at that size is still seen (the test above)
    photo = fixtures.load_rgb("obama.jpg")[:900, :900].astype(np.float32)
    yy, xx = np.mgrid[0 : photo.shape[0], 0 : photo.shape[1]]
    blocks = 3.0 * ((xx % 8 == 0) | (yy % 8 == 0))  # 8-px block edges of a JPEG, faint
    photo = np.clip(photo + blocks[..., None], 0, 255).astype(np.uint8)
    box = Box(0, 0, photo.shape[1], photo.shape[0])
    judged = lattice_ratio(photo, box)
    assert judged is not None and judged < LATTICE_RATIO
    monkeypatch.setattr(liveness, "SPECTRUM_FACE_SIDE", 10_000)  # no normalisation: full size
    full = lattice_ratio(photo, box)
    assert full is not None and full > LATTICE_RATIO


def test_texture_abstains_on_a_grey_face_and_judges_its_colour_original(
    stage: LivenessStage, detector: Detector
) -> None:
    # a NoIR camera at night: the colour-trained CNNs call grey real faces attacks
    photo = fixtures.load_rgb("obama.jpg")
    grey = np.repeat(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    tinted = np.clip(grey.astype(np.float32) * np.array([1.0, 0.8, 1.0]), 0, 255).astype(
        np.uint8
    )  # NoIR pink
    box = largest_box(detector, photo)
    colour_texture = stage.still(photo, box).cues[Cue.TEXTURE]
    assert colour_texture.passed is True and colour_texture.score is not None
    for image in (grey, tinted):
        texture = stage.still(np.ascontiguousarray(image), box).cues[Cue.TEXTURE]
        assert texture.passed is None and texture.score is None and texture.detail == {"grey_samples": 1.0}
    infrared = stage.visit([pad_sample(photo, box, infrared=True)]).cues[Cue.TEXTURE]
    assert infrared.passed is None  # an infrared sample is grey whatever its pixels say
