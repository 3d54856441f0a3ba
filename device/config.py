"""The unit's configuration: one TOML file validated by pydantic models.

Every model forbids unknown keys and bounds its fields, so a typo or an out-of-range value is reported
instead of silently ignored. Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class ConfigError(Exception):
    """A config that cannot be used; the message lists every problem, one per line."""

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


class CaptureSection(Section):
    backend: Literal["file", "opencv", "picamera2"] = "file"
    source: str = Field(default="", description="file/folder path, V4L2 index or path, or RTSP URL")
    width: int = Field(default=640, ge=64, le=4096)
    height: int = Field(default=480, ge=64, le=4096)
    fps: float = Field(default=15.0, gt=0.0, le=120.0)
    loop: bool = False
    realtime: bool = Field(default=True, description="file backend: pace frames at fps")
    rotation: Literal[0, 90, 180, 270] = 0
    hflip: bool = False
    vflip: bool = False
    reconnect_backoff_max_s: float = Field(default=30.0, ge=0.5, le=600.0)
    infrared: bool = Field(
        default=False, description="NoIR camera with an IR illuminator: PAD adds its infrared check"
    )


class ModelsSection(Section):
    dir: Path = Field(default=Path("models"), description="folder with the shipped model files and manifest")
    detector: str = Field(default="blazeface_full_range", min_length=1)
    embedder: str = Field(default="dlib_resnet_v1", min_length=1)
    accelerator: Literal["auto", "edgetpu", "cpu"] = "auto"
    edgetpu_device: Literal["usb", "pci", "any"] = "any"
    reprobe_interval_s: float = Field(default=300.0, ge=10.0, le=86_400.0)
    cpu_threads: int = Field(default=2, ge=1, le=8)
    cpu_variant: Literal["auto", "float", "int8"] = "auto"
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


class MotionSection(Section):
    enabled: bool = True
    downscale_width: int = Field(default=160, ge=32, le=640)
    pixel_delta: int = Field(default=18, ge=1, le=255)
    min_changed_fraction: float = Field(default=0.004, gt=0.0, le=1.0)


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
    nms_iou: float = Field(default=0.3, gt=0.0, lt=1.0)
    min_face_px: int = Field(default=40, ge=8, le=2048)
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
    iou_threshold: float = Field(default=0.3, gt=0.0, lt=1.0)
    confirm_frames: int = Field(default=2, ge=1, le=30)
    max_lost_frames: int = Field(default=8, ge=1, le=300)


class QualitySection(Section):
    min_face_px: int = Field(default=60, ge=16, le=2048)
    min_sharpness: float = Field(default=40.0, ge=0.0, description="variance of the Laplacian")
    max_yaw_deg: float = Field(default=35.0, gt=0.0, le=90.0)
    min_brightness: float = Field(default=40.0, ge=0.0, le=255.0)
    max_brightness: float = Field(default=220.0, ge=0.0, le=255.0)
    best_k: int = Field(default=5, ge=1, le=32)

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
    max_samples: int = Field(default=5, ge=1, le=32)
    require_claim: bool = Field(default=False, description="armed mode: match only after a claim/trigger")
    claim_window_s: float = Field(default=15.0, gt=0.0, le=600.0)


class GallerySection(Section):
    path: Path = Field(
        default=Path("state/gallery.enc"),
        description="encrypted gallery: one file, rewritten atomically on every change",
    )
    master_key_path: Path = Field(default=Path("secrets/master.key"))
    key_source: Literal["file", "host-credential", "tpm2"] = Field(
        default="file",
        description="how the master key file is protected: file (plain 0600; health warns), "
        "host-credential (systemd credential sealed with the host key) or tpm2 (sealed to the unit's TPM)",
    )
    default_expiry_days: int = Field(default=365, ge=1, le=MAX_ENROLMENT_DAYS)
    max_templates_per_subject: int = Field(default=5, ge=1, le=32)
    consent_purpose_version: str = Field(
        default="v1",
        pattern=r"^[A-Za-z0-9._-]{1,32}$",
        description="version of the purpose text on the consent form, recorded with each enrolment",
    )


class MqttTls(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttSection(Section):
    enabled: bool = False
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=8883, ge=1, le=65_535)
    tls: MqttTls = Field(default_factory=MqttTls)
    username: str | None = None
    password_file: Path | None = Field(default=None, description="secrets by path, never inline")
    topic_prefix: str = Field(default="entrance", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0, le=604_800)
    health_interval_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    reconnect_backoff_max_s: float = Field(
        default=30.0, ge=0.5, le=600.0, description="cap of the jittered exponential reconnect backoff"
    )
    outbox_path: Path = Field(default=Path("state/outbox.db"))
    outbox_max_rows: int = Field(default=100_000, ge=10, le=10_000_000)
    outbox_max_bytes: int = Field(default=64 * 1024 * 1024, ge=10_000)
    ha_discovery: bool = False
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
    event_key_path: Path | None = Field(
        default=None,
        description=(
            "Ed25519 event signing key, made on first start (0600); "
            "default <unit.state_dir>/secrets/event-signing.key"
        ),
    )


class LoggingSection(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


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


class UnitConfig(Section):
    unit: UnitSection = Field(default_factory=UnitSection)
    capture: CaptureSection = Field(default_factory=CaptureSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    motion: MotionSection = Field(default_factory=MotionSection)
    detection: DetectionSection = Field(default_factory=DetectionSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    quality: QualitySection = Field(default_factory=QualitySection)
    matching: MatchingSection = Field(default_factory=MatchingSection)
    liveness: LivenessSection = Field(default_factory=LivenessSection)
    gallery: GallerySection = Field(default_factory=GallerySection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: dotted path, the value given, and what was expected."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown key{did_you_mean(item['loc'])}")
            continue
        given = item.get("input")
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch":
            pattern = str((item.get("ctx") or {}).get("pattern", ""))
            message = f"must be {PATTERN_RULES[pattern]}" if pattern in PATTERN_RULES else message
        problems.append(f"{path} = {given!r}: {message}")
    return problems


def did_you_mean(location: tuple[int | str, ...]) -> str:
    """' (did you mean X?)' for an unknown key close to a known one of its section, else a pointer."""
    import difflib

    model: type[BaseModel] = UnitConfig
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return " (not part of the config schema)"
        model = annotation
    close = difflib.get_close_matches(str(location[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known here: {', '.join(model.model_fields)})"


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
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            str(path), [f"the file is {len(raw)} bytes; a unit config is at most {MAX_CONFIG_BYTES}"]
        )
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
