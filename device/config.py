"""The unit's configuration: one TOML file validated by pydantic models.

Every model forbids unknown keys and bounds its fields, so a typo or an out-of-range value is reported
instead of silently ignored. Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from device.atomicio import InputFileError, read_capped
from device.errors import EXIT_USAGE, UserError

OPENCV_URL = re.compile(r"^(rtsp|rtsps|http|https)://")
UNIT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
UNIT_ID_RULE = "1 to 63 characters: lowercase letters, digits and '-', starting with a letter or digit"
# What a pattern means, in words, for the messages a person reads (the regex stays in the schema).
PATTERN_RULES = {
    UNIT_ID_PATTERN: UNIT_ID_RULE,
    r"^[A-Za-z0-9._-]{1,32}$": "1 to 32 letters, digits, '.', '_' or '-'",
    r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$": "letters, digits, '_' or '-', levels separated by '/'",
}
MAX_ENROLMENT_DAYS = 3 * 365

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Fraction, Fraction]
Grey = Annotated[float, Field(ge=0.0, le=255.0)]  # a mean grey level


class ConfigError(UserError):
    """A config that cannot be used; the message lists every problem, one per line."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid config {source}:\n{listing}")


MAX_CONFIG_BYTES = 256 * 1024  # the defaults file with every comment is ~10 KB


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitSection(Section):
    id: str = Field(
        default="demo-unit", pattern=UNIT_ID_PATTERN, description="unit name, also its MQTT identity"
    )
    state_dir: Path = Field(default=Path("state"), description="outbox, gallery, audit log")


class CaptureCommon(Section):
    """The keys every camera backend takes."""

    width: int = Field(default=640, ge=64, le=4096, description="frame width asked of the camera, pixels")
    height: int = Field(default=480, ge=64, le=4096, description="frame height asked of the camera, pixels")
    fps: float = Field(
        default=15.0,
        gt=0.0,
        le=120.0,
        description="frames per second asked of the camera (file backend: the pace when realtime)",
    )
    rotation: Literal[0, 90, 180, 270] = Field(
        default=0, description="rotate frames by this many degrees clockwise (camera mounted sideways)"
    )
    hflip: bool = Field(default=False, description="mirror frames left-right")
    vflip: bool = Field(default=False, description="flip frames upside down")
    reconnect_backoff_max_s: float = Field(
        default=30.0, ge=0.5, le=600.0, description="longest wait before reopening a lost camera, seconds"
    )
    infrared: bool = Field(
        default=False, description="NoIR camera with an IR illuminator: PAD adds its infrared check"
    )


DEFAULT_BACKEND: Final = "picamera2"  # the unit's own camera
BACKEND_TEXT = "picamera2 (Pi camera), opencv (V4L2 device or RTSP stream) or file (video or picture folder)"


class Picamera2Capture(CaptureCommon):
    backend: Literal["picamera2"] = Field(default=DEFAULT_BACKEND, description=BACKEND_TEXT)

    def source_label(self) -> str:
        return "(the Pi camera)"


class OpenCvCapture(CaptureCommon):
    backend: Literal["opencv"] = Field(description=BACKEND_TEXT)
    source: str = Field(
        default="0",
        description="V4L2 index (0), device path (/dev/video0) or stream URL (rtsp://...)",
    )

    @field_validator("source")
    @classmethod
    def _camera_or_stream(cls, source: str) -> str:
        text = source.strip() or "0"  # empty meant the first camera before the backends had own sections
        if re.fullmatch(r"\d{1,3}", text) or text.startswith("/dev/") or OPENCV_URL.match(text):
            return text
        raise ValueError("expected a V4L2 index (0), a device path (/dev/video0) or a URL (rtsp://...)")

    def source_label(self) -> str:
        return self.source


class FileCapture(CaptureCommon):
    backend: Literal["file"] = Field(description=BACKEND_TEXT)
    source: Path = Field(
        description="video file or picture folder (demos, tests), relative to the config file"
    )
    loop: bool = Field(default=False, description="start the file again at its end instead of stopping")
    realtime: bool = Field(
        default=True, description="pace frames at fps (off: as fast as they are processed)"
    )

    @field_validator("source", mode="before")
    @classmethod
    def _not_empty(cls, source: Any) -> Any:
        if isinstance(source, str) and not source.strip():  # Path("") would quietly mean "."
            raise ValueError("the file backend needs a video file or picture folder")
        return source

    def source_label(self) -> str:
        return str(self.source)


# The section's variants by their `backend` tag (pydantic puts the tag into error locations).
CAPTURE_BACKENDS: dict[str, type[CaptureCommon]] = {
    "picamera2": Picamera2Capture,
    "opencv": OpenCvCapture,
    "file": FileCapture,
}


def capture_backend(section: Any) -> str:
    """The tag that picks the section's model; a [capture] table without one means the default camera,
    as when the table is left out."""
    if isinstance(section, dict):
        return str(section.get("backend", DEFAULT_BACKEND))
    return str(getattr(section, "backend", DEFAULT_BACKEND))  # not a table: the default model says so


CaptureSection = Annotated[
    Annotated[Picamera2Capture, Tag("picamera2")]
    | Annotated[OpenCvCapture, Tag("opencv")]
    | Annotated[FileCapture, Tag("file")],
    Discriminator(capture_backend),
]


class ModelsSection(Section):
    dir: Path = Field(default=Path("models"), description="folder with the shipped model files and manifest")
    detector: str = Field(
        default="blazeface_full_range",
        min_length=1,
        description="face detector: a model name in the manifest",
    )
    embedder: str = Field(
        default="dlib_resnet_v1", min_length=1, description="face embedder: a model name in the manifest"
    )
    accelerator: Literal["auto", "edgetpu", "cpu"] = Field(
        default="auto",
        description="auto: Edge TPU with a compiled file and a Coral, else CPU; or edgetpu, cpu",
    )
    edgetpu_device: Literal["usb", "pci", "any"] = Field(
        default="any", description="which Coral to use: usb, pci, or any (usb first)"
    )
    reprobe_interval_s: float = Field(
        default=300.0,
        ge=10.0,
        le=86_400.0,
        description="while on the CPU fallback, look for the Edge TPU again this often, seconds",
    )
    cpu_threads: int = Field(default=2, ge=1, le=8, description="interpreter threads on the CPU")
    cpu_variant: Literal["auto", "float", "int8"] = Field(
        default="auto",
        description="CPU file: float, int8, or auto (time both at first start; switch only for a clear "
        "margin, else keep the previous choice or float)",
    )
    # 30 %: on the shared 2-core build host the detector's int8/float ratio is ~1.05-1.3 from start to
    # start (models/README.md, "CPU variant"), so 10-25 % sat on it; a real kernel advantage (the
    # embedder: 2-4x, the PAD CNNs' float: 3-7x) is far above. int8 also shifts decisions a little,
    # which a small gain does not pay for.
    cpu_variant_margin: float = Field(
        default=0.30,
        ge=0.0,
        le=1.0,
        description="auto: a CPU file replaces the previous choice (or the default, float) only when "
        "it is faster by at least this fraction in all parts of the timing but one",
    )
    cpu_variant_probe_s: float = Field(
        default=1.5,
        ge=0.1,
        le=30.0,
        description="auto: seconds spent per model timing float and int8 at first start (at least "
        "15 runs of each, so a slow model may take longer)",
    )
    pad_texture: list[str] = Field(
        default_factory=lambda: ["minifasnet_v2", "minifasnet_v1se"],
        min_length=1,
        max_length=4,
        description="presentation-attack texture CNNs (manifest names); their P(real) is averaged",
    )
    landmarks: str = Field(default="face_landmark", min_length=1, description="dense 468-point face mesh")
    embed_mirror: bool = Field(
        default=False,
        description="each face's embedding is the mean of its chip's and the mirror image's (one more "
        "embedder inference per face; README, Recognition on LFW)",
    )
    embed_mirror_grey: bool = Field(
        default=True,
        description="the same for grey faces only (a NoIR camera at night): one more embedder inference "
        "per grey face (README, Recognition on LFW)",
    )


class MotionSection(Section):
    enabled: bool = Field(
        default=True, description="run the detector only while something moves (or a visit is in progress)"
    )
    downscale_width: int = Field(
        default=160, ge=32, le=640, description="frames are shrunk to this width, pixels, before comparing"
    )
    pixel_delta: int = Field(default=18, ge=1, le=255, description="grey change that marks a pixel as moved")
    min_changed_fraction: float = Field(
        default=0.004, gt=0.0, le=1.0, description="share of changed pixels that counts as motion"
    )


class DetectionSection(Section):
    decoder: Literal["auto", "blazeface", "ssd_postprocess"] = Field(
        default="auto",
        description="output decoder: BlazeFace anchors, or an SSD post-process model (boxes, classes, "
        "scores, count); auto picks by the model's outputs",
    )
    # By measurement (issue 15, `device models eval --detection-sweep`, table in models/README.md): on
    # colour frames the strongest false detection was 0.45 and the weakest fixture face 0.52 (int8,
    # under-exposed); grey frames take their own path and threshold (vision/detect.py, SKIN_TINT).
    score_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="minimum face score, colour frames"
    )
    grey_score_threshold: float = Field(
        default=0.41,
        gt=0.0,
        lt=1.0,
        description="minimum face score on grey frames (NoIR/night), after the skin tint; between the "
        "strongest grey false detection (0.371) and the weakest grey fixture face (0.452) measured",
    )
    # Issue 28: BlazeFace full-range learnt faces a few tens of pixels tall; a face that fills the frame
    # (a close-up, a portrait) may score under the threshold. On ../shared/lfw every face it missed scored
    # 0.30-0.48 there and 0.57-0.81 with the frame shrunk to half (both CPU files; issue 28 commits).
    retry_score: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="when no face reaches the threshold but a candidate scores at least this, detect again "
        "on the frame shrunk to half of the detector input (same thresholds); 1 = never",
    )
    nms_iou: float = Field(
        default=0.3, gt=0.0, lt=1.0, description="overlap above which two detections are the same face"
    )
    min_face_px: int = Field(
        default=40, ge=8, le=2048, description="faces smaller than this, pixels, are ignored"
    )
    zone: list[Point] = Field(
        default_factory=list, description="entrance zone polygon in normalised [x, y]; empty = whole frame"
    )

    @field_validator("zone")
    @classmethod
    def _zone_is_polygon(cls, zone: list[Point]) -> list[Point]:
        if zone and len(zone) < 3:
            raise ValueError("a zone needs at least 3 points (or none for the whole frame)")
        return zone


class TrackingSection(Section):
    iou_threshold: float = Field(
        default=0.3, gt=0.0, lt=1.0, description="overlap with a track's last box that continues the track"
    )
    confirm_frames: int = Field(default=2, ge=1, le=30, description="frames seen before a face is a visit")
    max_lost_frames: int = Field(
        default=8, ge=1, le=300, description="frames without the face after which a visit ends"
    )


class QualitySection(Section):
    min_face_px: int = Field(
        default=60, ge=16, le=2048, description="smallest face, pixels, used for matching (and enrolment)"
    )
    min_sharpness: float = Field(default=40.0, ge=0.0, description="variance of the Laplacian")
    max_yaw_deg: float = Field(
        default=35.0, gt=0.0, le=90.0, description="faces turned further than this, degrees, are not used"
    )
    min_brightness: Grey = Field(default=40.0, description="darker faces (mean grey level) are not used")
    max_brightness: Grey = Field(default=220.0, description="brighter faces (mean grey level) are not used")
    best_k: int = Field(default=5, ge=1, le=32, description="best face samples kept per visit")

    @model_validator(mode="after")
    def _brightness_range(self) -> QualitySection:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self


class MatchingSection(Section):
    # 0.92: measured on the fixture photos with the shipped models (float or int8 embedder alike, CPU):
    # same person 0.948-0.972, Obama against every other fixture face at most 0.845 (dlib's 5-point
    # alignment, issue 15; 0.945-0.973 / 0.869 with the keypoint alignment before); the threshold sits
    # nearer the genuine end because a false accept at a door costs more than a second look.
    threshold: float = Field(default=0.92, gt=0.0, lt=1.0, description="cosine similarity to accept")
    min_margin: float = Field(default=0.01, ge=0.0, lt=1.0, description="to the best other subject")
    max_samples: int = Field(
        default=5, ge=1, le=32, description="samples of a visit compared with the gallery (at most best_k)"
    )
    require_claim: bool = Field(default=False, description="armed mode: match only after a claim/trigger")
    claim_window_s: float = Field(
        default=15.0, gt=0.0, le=600.0, description="how long a claim waits for the claimed person, seconds"
    )


class GallerySection(Section):
    path: Path = Field(
        default=Path("state/gallery.enc"),
        description="encrypted gallery: one file, rewritten atomically on every change",
    )
    master_key_path: Path = Field(
        default=Path("secrets/master.key"),
        description="the unit's master key file (0600); never leaves the unit",
    )
    key_source: Literal["file", "host-credential", "tpm2"] = Field(
        default="file",
        description="how the master key file is protected: file (plain 0600; health warns), "
        "host-credential (systemd credential sealed with the host key) or tpm2 (sealed to the unit's TPM)",
    )
    default_expiry_days: int = Field(
        default=365,
        ge=1,
        le=MAX_ENROLMENT_DAYS,
        description="enrolments expire after this many days unless --expires says otherwise",
    )
    max_templates_per_subject: int = Field(
        default=5, ge=1, le=32, description="templates kept per enrolled person"
    )
    consent_purpose_version: str = Field(
        default="v1",
        pattern=r"^[A-Za-z0-9._-]{1,32}$",
        description="version of the purpose text on the consent form, recorded with each enrolment",
    )


class MqttTls(Section):
    ca_file: Path | None = Field(
        default=None, description="CA certificate that signed the broker's certificate"
    )
    cert_file: Path | None = Field(
        default=None, description="the unit's certificate; its name (CN) must be unit.id"
    )
    key_file: Path | None = Field(default=None, description="the unit's private key (0600)")


class MqttSection(Section):
    enabled: bool = Field(
        default=False, description="publish events to the broker (off: decisions are printed)"
    )
    host: str = Field(
        default="localhost",
        min_length=1,
        description="broker host name; must match the name in the broker's certificate",
    )
    port: int = Field(default=8883, ge=1, le=65_535, description="broker TLS port")
    tls: MqttTls = Field(
        default_factory=MqttTls,
        description="TLS is mandatory: the broker's CA and the unit's own certificate and key",
    )
    username: str | None = Field(
        default=None,
        description="only for brokers that also want a user name (the certificate is the identity)",
    )
    password_file: Path | None = Field(default=None, description="secrets by path, never inline")
    topic_prefix: str = Field(
        default="entrance",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="topics are <prefix>/<unit id>/events|status|health|cmd",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds")
    session_expiry_s: int = Field(
        default=3600, ge=0, le=604_800, description="seconds the broker keeps the session (queued commands)"
    )
    health_interval_s: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="publish the retained health this often, seconds"
    )
    reconnect_backoff_max_s: float = Field(
        default=30.0, ge=0.5, le=600.0, description="cap of the jittered exponential reconnect backoff"
    )
    outbox_path: Path = Field(default=Path("state/outbox.db"), description="SQLite outbox of unacked events")
    outbox_max_rows: int = Field(
        default=100_000,
        ge=10,
        le=10_000_000,
        description="at most this many queued events; the oldest are dropped (counted) beyond",
    )
    outbox_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=10_000,
        description="at most this many bytes of queued events; the oldest are dropped beyond",
    )
    ha_discovery: bool = Field(
        default=False,
        description="announce the unit to Home Assistant (event entity, device triggers, sensors)",
    )
    ha_last_seen: bool = Field(
        default=False,
        description=(
            "with ha_discovery: a 'Last seen <subject id>' sensor per recognised subject, its time "
            "retained on the broker; a presence disclosure (who came in when), only where the building "
            "opted in. Off: no such sensor or topic"
        ),
    )
    unknown_scores: bool = Field(
        default=False,
        description=(
            "also publish similarity and margin for unknown visits (threshold tuning); a privacy "
            "trade-off: it tells consumers how close a stranger came to a resident"
        ),
    )
    command_keys: Path | None = Field(
        default=None,
        description=(
            'trusted commanders file ({"commanders": {name: Ed25519 public key}}, `device command key '
            "--register`); a command counts only when one of them signed it. Unset: every command is refused"
        ),
    )
    rejected_log_burst: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description=(
            "refused commands logged one line each per rejected_log_interval_s; the rest get one summary "
            "line (all are counted in health: commands.rejected)"
        ),
    )
    rejected_log_interval_s: float = Field(
        default=60.0, ge=1.0, le=86_400.0, description="the interval of rejected_log_burst, seconds"
    )
    clock_check: Literal["kernel", "off"] = Field(
        default="kernel",
        description=(
            'refuse commands (they expire) until the kernel says NTP set the clock; "off" only where the '
            "kernel cannot tell (containers): a clock that is behind makes a recorded command look fresh"
        ),
    )
    health_presence: bool = Field(
        default=False,
        description=(
            "also publish active_tracks (someone is at the door now) in the retained health; every consumer "
            "certificate can read it, so it is off unless a consumer needs presence"
        ),
    )
    event_key_path: Path | None = Field(
        default=None,
        description=(
            "Ed25519 event signing key, made on first start (0600); "
            "default <unit.state_dir>/signing/event-signing.key"
        ),
    )


class LoggingSection(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log level of `device run` (interactive commands log warnings only)"
    )


# 40 Mpx: more than any camera picture an installer enrols from (12-24 Mpx phones), far below what a
# hostile file can ask the decoder for (an 18000x18000 PNG of 0.9 MB decodes to almost 1 GB).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class LimitsSection(Section):
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1_000_000,
        le=200_000_000,
        description="pictures given to enroll/identify/compare/detect/calibrate: largest width x height "
        "decoded; checked from the file header before decoding",
    )


class LivenessSection(Section):
    mode: Literal["enforce", "report", "off"] = Field(
        default="enforce",
        description="enforce: a visit failing PAD is presentation_attack; report: scores only; off: no PAD",
    )
    name_attacked_subject: bool = Field(
        default=False,
        description="a presentation_attack event names the resident the picture matched (privacy trade-off)",
    )
    texture_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="the texture cue passes a face when the models' mean P(real) is at least this",
    )
    uncertain: Literal["second_factor", "allow"] = Field(
        default="second_factor",
        description=(
            "a recognised visit PAD could not vouch for (no cue rejected, none saw a live face: a grey face "
            "at night that did not move) is marked second_factor_required, which the door takes only with a "
            "verified claim (badge, keypad); allow: recognised as any other"
        ),
    )


class UnitConfig(Section):
    unit: UnitSection = Field(default_factory=UnitSection, description="the unit itself")
    capture: CaptureSection = Field(
        default_factory=Picamera2Capture, description="the camera; which keys apply depends on backend"
    )
    models: ModelsSection = Field(default_factory=ModelsSection, description="model files and where they run")
    motion: MotionSection = Field(
        default_factory=MotionSection, description="motion gate in front of the detector"
    )
    detection: DetectionSection = Field(default_factory=DetectionSection, description="face detector")
    tracking: TrackingSection = Field(
        default_factory=TrackingSection, description="faces followed across frames (one visit per track)"
    )
    quality: QualitySection = Field(
        default_factory=QualitySection, description="which faces are good enough to match"
    )
    matching: MatchingSection = Field(
        default_factory=MatchingSection, description="comparison with the enrolled residents"
    )
    liveness: LivenessSection = Field(
        default_factory=LivenessSection,
        description="presentation-attack detection (a photo or a screen is not a person)",
    )
    gallery: GallerySection = Field(
        default_factory=GallerySection, description="enrolled residents (encrypted)"
    )
    mqtt: MqttSection = Field(default_factory=MqttSection, description="events to the broker")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="logging")
    limits: LimitsSection = Field(
        default_factory=LimitsSection, description="bounds on what the unit's commands accept from files"
    )


def describe_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: dotted path, the value given, and what was expected."""
    problems = []
    for item in error.errors():
        location = item["loc"]
        path = prefix + ".".join(str(part) for part in public_location(location)) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown key{did_you_mean(location)}")
            continue
        if item["type"] == "missing":
            field = field_at(location)
            needed = f" ({field.description})" if field is not None and field.description else ""
            problems.append(f"{path}: required{needed}")
            continue
        if item["type"] == "union_tag_invalid" and location == ("capture",):
            problems.extend(unknown_backend_problems(item.get("input")))
            continue
        given = item.get("input")
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch":
            pattern = str((item.get("ctx") or {}).get("pattern", ""))
            message = f"must be {PATTERN_RULES[pattern]}" if pattern in PATTERN_RULES else message
        problems.append(f"{path} = {given!r}: {message}")
    return problems


def public_location(location: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The location as the file spells it: pydantic adds the capture backend's tag after `capture`."""
    if len(location) > 1 and location[0] == "capture" and location[1] in CAPTURE_BACKENDS:
        return (location[0], *location[2:])
    return location


def unknown_backend_problems(section: Any) -> list[str]:
    """An unknown backend stops pydantic at the tag; the keys every backend shares are still checked,
    so one `config check` lists every problem."""
    backend = section.get("backend") if isinstance(section, dict) else None
    problems = [f"capture.backend = {backend!r}: must be one of {', '.join(map(repr, CAPTURE_BACKENDS))}"]
    if isinstance(section, dict):
        shared = {key: value for key, value in section.items() if key in CaptureCommon.model_fields}
        try:
            CaptureCommon.model_validate(shared)
        except ValidationError as error:
            problems.extend(describe_validation_error(error, prefix="capture."))
    return problems


def model_at(location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that holds the last part of an error location (the capture variant by its tag)."""
    model: type[BaseModel] = UnitConfig
    parts = list(location[:-1])
    while parts:
        part = str(parts.pop(0))
        field = model.model_fields.get(part)
        if field is None:
            return None
        if model is UnitConfig and part == "capture":
            tag = str(parts.pop(0)) if parts else ""
            if tag not in CAPTURE_BACKENDS:
                return None
            model = CAPTURE_BACKENDS[tag]
            continue
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def field_at(location: tuple[int | str, ...]) -> FieldInfo | None:
    model = model_at(location)
    return None if model is None or not location else model.model_fields.get(str(location[-1]))


def did_you_mean(location: tuple[int | str, ...]) -> str:
    """A pointer for an unknown key: the backend or the table that takes it (`ha_discovery` under
    `[unit]` belongs in `[mqtt]`), else ' (did you mean X?)' for one close to a key of its table."""
    model = model_at(location)
    if model is None:
        return " (not part of the config schema)"
    key = str(location[-1])
    capture = model if issubclass(model, CaptureCommon) else None
    if capture and any(key in variant.model_fields for variant in CAPTURE_BACKENDS.values()):
        return capture_key_hint(key, capture)
    table = ".".join(str(part) for part in public_location(location[:-1]))
    elsewhere = [other for other in tables_holding(key) if other != table]
    if elsewhere:
        return belongs_in(elsewhere)
    close = close_match(key, list(model.model_fields))
    if close:
        return f" (did you mean {close[0]!r}?)"
    if capture:
        return capture_key_hint(key, capture)
    return f" (known here: {', '.join(model.model_fields)})"


def belongs_in(tables: list[str]) -> str:
    return f" (it belongs in {' or '.join(f'[{table}]' for table in tables)})"


def tables_holding(key: str) -> list[str]:
    """The tables of the config file (`mqtt`, `mqtt.tls`, `capture`) that have a key of this name:
    a key placed under the wrong table is most often one that belongs in another."""
    tables: list[str] = []

    def walk(model: type[BaseModel], table: str) -> None:
        if table and key in model.model_fields and table not in tables:
            tables.append(table)
        for name, field in model.model_fields.items():
            inner = f"{table}.{name}" if table else name
            if model is UnitConfig and name == "capture":
                for variant in CAPTURE_BACKENDS.values():
                    walk(variant, inner)
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation, inner)

    walk(UnitConfig, "")
    return tables


def capture_key_hint(key: str, chosen: type[CaptureCommon]) -> str:
    """A key of another backend (`loop` with a camera) says which backend takes it."""
    every = {name for variant in CAPTURE_BACKENDS.values() for name in variant.model_fields}
    close = [key] if key in every else close_match(key, sorted(every))
    if not close:
        return f" (known here: {', '.join(chosen.model_fields)})"
    owners = [tag for tag, variant in CAPTURE_BACKENDS.items() if close[0] in variant.model_fields]
    takes = " or ".join(f'backend = "{tag}"' for tag in owners)
    if close[0] == key:
        return f" (only with {takes})"
    return f" (did you mean {close[0]!r}?) ({close[0]!r} only with {takes})"


def close_match(key: str, names: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(key, names, n=1, cutoff=0.6)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> UnitConfig:
    try:
        config = UnitConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, describe_validation_error(error)) from None
    return resolve_paths(config, base_dir) if base_dir is not None else config


def load_config(path: Path | None) -> UnitConfig:
    """Read and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return UnitConfig()
    try:
        raw = read_capped(path, MAX_CONFIG_BYTES, "the unit config")
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    except InputFileError as error:  # /dev/zero, a FIFO, a 3 GB file: refused before reading
        raise ConfigError(str(path), [str(error)]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(str(path), [f"not valid TOML: {error}"]) from None
    except RecursionError:
        # tomllib recurses once per nesting level: a hostile file of a few KB of "[[[[" exhausts the stack.
        raise ConfigError(str(path), ["not valid TOML: values nested too deeply"]) from None
    return parse_config(data, str(path), path.resolve().parent)


def resolve_paths(config: UnitConfig, base_dir: Path) -> UnitConfig:
    """Relative paths in the config mean 'relative to the config file', wherever the unit is started."""

    def fix(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else (base_dir / value)
        if isinstance(value, BaseModel):
            updates = {name: fix(getattr(value, name)) for name in type(value).model_fields}
            return value.model_copy(update=updates)
        return value

    resolved: UnitConfig = fix(config)
    return resolved


def config_json_schema() -> dict[str, Any]:
    schema = UnitConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Entrance camera unit config"
    return schema
