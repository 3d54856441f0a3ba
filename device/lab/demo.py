"""``make run``: the whole unit on a generated clip, from an empty directory to printed decisions.

Steps: a fresh unit directory (``device init``: config, master key, state); the demo resident enrolled
from two fixture photos with a demo consent record through the gallery store (audited like any
enrolment); a clip in which the resident (a third, different photo) and then a visitor who is not
enrolled walk in, then a third visitor holds up a printed photo of the resident (a presentation attack),
with an empty entrance before, between and after; then the same pipeline ``device run`` uses, on the CPU
fallback, printing each decision as it is made. The demo checks its own outcome: the resident must be
recognised, the visitor must not, and the print must be a ``presentation_attack``, otherwise it exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.config import UnitConfig, load_config
from device.errors import UserError
from device.evaluation import fixtures
from device.identity.gallery_store import EnrolRequest, GalleryStore
from device.lab.democlip import (
    DemoClip,
    VisitSpan,
    demo_walks,
    hallway,
    iter_script_frames,
    largest_face,
    write_mjpeg,
)
from device.lab.padattacks import attack_clip_frames, draw_params
from device.types import Decision, DecisionType
from device.vision.faces import FaceAnalyzer, Stages

log = logging.getLogger(__name__)

RESIDENT_ENROL_PHOTOS = ("obama2.jpg", "obama3.jpg")
RESIDENT_CLIP_PHOTO = "obama.jpg"
VISITOR_CLIP_PHOTO = "biden.jpg"
DEMO_OPERATOR = "demo"
DEMO_CONSENT_REFERENCE = "DEMO-CONSENT-0001 (demo resident, fixture photos)"
DEMO_NAME = "Demo Resident"
CONFIG_NAME = "demo.toml"
PRINT_ATTACK_SEED = 5
ATTACK_FRAMES = 36  # attack_clip_frames' default length


class DemoError(UserError):
    pass


@dataclass(frozen=True)
class DemoUnit:
    directory: Path
    config_path: Path
    config: UnitConfig


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_text(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for config dicts (tables of scalars, lists and sub-tables)."""
    lines: list[str] = []
    scalars = {key: value for key, value in data.items() if not isinstance(value, Mapping)}
    tables = {key: value for key, value in data.items() if isinstance(value, Mapping)}
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    lines += [f"{key} = {toml_value(value)}" for key, value in scalars.items()]
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        text += toml_text(table, f"{prefix}.{key}" if prefix else key)
    return text


def init_unit(directory: Path, run_init: Callable[[list[str]], int]) -> Path:
    """``device init`` into ``directory``; returns the config path it wrote."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = run_init(["init", "--dir", str(directory), "--operator", DEMO_OPERATOR])
    if code != 0:
        raise DemoError(f"device init failed (exit {code}): {output.getvalue().strip()}")
    return Path(output.getvalue().strip().splitlines()[-1])


def write_demo_config(unit_config: Path, clip: Path, overrides: Mapping[str, Mapping[str, Any]]) -> Path:
    """The unit's own config plus the demo's file source (and any overrides, e.g. the local broker)."""
    data: dict[str, Any] = tomllib.loads(unit_config.read_text())
    data["capture"] = {"backend": "file", "source": str(clip), "fps": 15.0, "realtime": True}
    data.setdefault("models", {})["accelerator"] = "auto"
    for section, values in overrides.items():
        merged = dict(data.get(section, {}))
        merged.update(values)
        data[section] = merged
    path = unit_config.with_name(CONFIG_NAME)
    path.write_text("# The demo's unit config, written by `device demo`.\n" + toml_text(data))
    return path


def enrol_demo_resident(config: UnitConfig, analyzer: FaceAnalyzer) -> str:
    templates = []
    for name in RESIDENT_ENROL_PHOTOS:
        face = analyzer.largest(fixtures.load_rgb(name))
        if face is None:
            raise DemoError(f"no face found in the enrolment photo {name}")
        templates.append(face.embedding)
    store = GalleryStore.from_config(config)
    info = store.enrol(
        EnrolRequest(
            name=DEMO_NAME,
            templates=np.stack(templates),
            consent_reference=DEMO_CONSENT_REFERENCE,
            operator=DEMO_OPERATOR,
            purpose_version=config.gallery.consent_purpose_version,
            images_used=len(templates),
        )
    )
    return info.subject_id


def make_demo_clip(directory: Path, analyzer: FaceAnalyzer) -> DemoClip:
    """Resident, visitor, then the print attack (a print of the resident's clip photo, moved closer)."""
    resident_photo = fixtures.load_rgb(RESIDENT_CLIP_PHOTO)
    walks = demo_walks(resident_photo, fixtures.load_rgb(VISITOR_CLIP_PHOTO))
    size, fps, empty = (640, 480), 15.0, 15
    background = hallway(*size)
    located = [(walk, largest_face(analyzer.detector.detect, walk.photo, walk.label)) for walk in walks]
    spans: list[VisitSpan] = []
    people = iter_script_frames(background, located, spans, empty_frames=empty)
    face = largest_face(analyzer.detector.detect, resident_photo, "print attack")
    params = draw_params(np.random.default_rng(PRINT_ATTACK_SEED))
    attack = attack_clip_frames(resident_photo, face.box, "print_clip", params, size=size, empty_frames=0)
    attack_frames = ATTACK_FRAMES
    path = directory / "entrance-demo.avi"
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = itertools.chain(people, attack, itertools.repeat(background, empty))
    written = write_mjpeg(path, frames, fps, size)
    first = written - empty - attack_frames
    spans.append(VisitSpan("print attack", first, first + attack_frames - 1))
    return DemoClip(path, fps, size, written, tuple(spans))


def prepare(
    directory: Path,
    stages_for: Callable[[UnitConfig], Stages],
    run_init: Callable[[list[str]], int],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[DemoUnit, Stages, DemoClip, str]:
    """Unit dir, models, the enrolled resident, the clip; returns what the run needs."""
    unit_config = init_unit(directory / "unit", run_init)
    base_config = load_config(unit_config)
    stages = stages_for(base_config)
    analyzer = FaceAnalyzer.from_stages(stages)
    resident = enrol_demo_resident(base_config, analyzer)
    clip = make_demo_clip(directory, analyzer)
    config_path = write_demo_config(unit_config, clip.path, overrides or {})
    return DemoUnit(directory, config_path, load_config(config_path)), stages, clip, resident


def describe(decision: Decision, resident: str) -> str:
    if decision.type is DecisionType.RECOGNIZED:
        who = decision.subject_id
        what = f"RECOGNIZED {who} ({DEMO_NAME})" if who == resident else f"RECOGNIZED {who}"
    elif decision.type is DecisionType.UNKNOWN:
        what = "UNKNOWN visitor"
    elif decision.type is DecisionType.PRESENTATION_ATTACK:
        what = "PRESENTATION ATTACK (a photo or screen, not a person)"
    else:
        what = "INSUFFICIENT QUALITY"
    details = []
    if decision.similarity is not None:
        details.append(f"similarity {decision.similarity:.3f}")
    details.append(f"{decision.frames} frames")
    details.append("reasons " + ",".join(decision.reasons))
    return f"visit {decision.track_id}: {what}  ({'; '.join(details)})"


def outcome_problems(decisions: list[Decision], resident: str) -> list[str]:
    """What went wrong compared with the script: resident recognised, the visitor not, the print an attack."""
    problems = []
    if len(decisions) != 3:
        problems.append(f"expected 3 decisions (resident, visitor, print attack), got {len(decisions)}")
    first = decisions[0] if decisions else None
    if first is None or first.type is not DecisionType.RECOGNIZED or first.subject_id != resident:
        problems.append("the resident's visit was not recognised as the enrolled resident")
    if len(decisions) < 2 or decisions[1].type is DecisionType.RECOGNIZED:
        problems.append("the visitor's visit was not decided as not recognised")
    if len(decisions) < 3 or decisions[2].type is not DecisionType.PRESENTATION_ATTACK:
        problems.append("the printed photo of the resident was not decided presentation_attack")
    return problems


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=None, metavar="DIR", help="work folder (default: a new temporary one)"
    )
    parser.add_argument("--fast", action="store_true", help="do not pace the clip at 15 fps")
