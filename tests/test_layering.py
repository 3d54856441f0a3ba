"""The folder tree reads like the architecture, and imports only go one way.

Layers, lowest first: the top-level core (config, types, atomicio, timing, progress), then ``models``,
``vision``, ``identity``, ``events``. Above them four rooms with one job each: ``runtime`` (what runs on the
unit), ``ops`` (the installer's diagnostics), ``consumers`` (what listens on other machines) and the
``lab`` (demo, attack renderer, benchmarks, dev broker) over ``evaluation``. ``commands`` and ``cli`` sit on
top. Every import inside ``device`` (including imports inside functions) is checked against the rule each
subpackage's ``__init__`` states; the unit's own room reaches none of the others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parent.parent / "device"

CORE = "core"
ENTRY = "entry"  # cli, __main__ and the commands: may import anything
UNIT_SIDE = {CORE, "models", "vision", "identity", "events"}
ALLOWED: dict[str, set[str]] = {
    CORE: {CORE},
    "models": {CORE, "models"},
    "vision": {CORE, "models", "vision"},
    "identity": {CORE, "models", "vision", "identity"},
    "events": {CORE, "events"},
    "runtime": UNIT_SIDE | {"runtime"},
    "ops": UNIT_SIDE | {"runtime", "ops"},
    "consumers": {CORE, "events", "consumers"},
    "evaluation": {CORE, "models", "vision", "identity", "evaluation"},
    "lab": UNIT_SIDE | {"runtime", "consumers", "evaluation", "lab"},
}
ALLOWED[ENTRY] = set(ALLOWED) | {ENTRY}
SUBPACKAGES = set(ALLOWED) - {CORE, ENTRY}


def layer_of_module(dotted: str) -> str:
    """The layer of ``device.x.y`` (a module or package inside device)."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return CORE  # ``from device.evaluation import fixtures`` / ``__version__``
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] in {"commands", "cli", "__main__"}:
        return ENTRY
    return CORE


def layer_of_file(path: Path) -> str:
    return layer_of_module("device." + ".".join(path.relative_to(DEVICE).with_suffix("").parts))


def imported_device_modules(source: str) -> list[str]:
    """Every ``device...`` module a source imports, at any depth (lazy imports included)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "device":
                found += [f"device.{alias.name}" for alias in node.names]
            elif node.module.startswith("device."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "device" or a.name.startswith("device.")]
    return found


def layering_violations(path: Path, source: str) -> list[str]:
    layer = layer_of_file(path)
    return [
        f"{path.relative_to(DEVICE.parent)}: {layer} imports {target} ({layer_of_module(target)})"
        for target in imported_device_modules(source)
        if layer_of_module(target) not in ALLOWED[layer]
    ]


def device_sources() -> list[Path]:
    return sorted(DEVICE.rglob("*.py"))


def test_imports_only_go_down_the_layers() -> None:
    problems = [v for path in device_sources() for v in layering_violations(path, path.read_text())]
    assert problems == []


def test_no_relative_imports_hide_from_the_check() -> None:
    relative = [
        str(path.relative_to(DEVICE.parent))
        for path in device_sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


@pytest.mark.parametrize(
    ("file", "line"),
    [
        ("vision/detect.py", "from device.events.payloads import decode"),
        ("events/outbox.py", "from device.identity.gallery_store import GalleryStore"),
        ("identity/gallery_store.py", "from device.runtime import pipeline"),
        ("runtime/service.py", "from device.lab.democlip import make_clip"),
        ("runtime/pipeline.py", "from device.evaluation import fixtures"),
        ("runtime/service.py", "def f():\n    from device.consumers.door import DoorAudit\n"),
        ("runtime/selftest.py", "import device.ops.doctor"),
        ("consumers/door.py", "from device.identity.gallery_store import GalleryStore"),
        ("consumers/consumer.py", "from device.runtime.pipeline import Pipeline"),
        ("ops/doctor.py", "from device.lab.bench import run_bench"),
        ("evaluation/detector.py", "from device.lab.demo import run_demo"),
        ("models/accelerator.py", "import device.vision.capture"),
        ("config.py", "from device.models.manifest import Manifest"),
        ("vision/quality.py", "def f():\n    from device.identity.match import TemplateIndex\n"),
    ],
)
def test_the_check_catches_an_upward_import(file: str, line: str) -> None:
    assert layering_violations(DEVICE / file, line), f"{file}: '{line}' should be refused"


def test_the_top_level_stays_small_and_grouped() -> None:
    top_level = sorted(p.name for p in DEVICE.glob("*.py"))
    assert len(top_level) <= 12, top_level
    packages = sorted(p.name for p in DEVICE.iterdir() if (p / "__init__.py").exists())
    assert set(packages) >= SUBPACKAGES, packages


@pytest.mark.parametrize("package", sorted(SUBPACKAGES | {"commands"}))
def test_each_subpackage_says_what_lives_there(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((DEVICE / package / "__init__.py").read_text()))
    assert docstring, f"device/{package}/__init__.py has no docstring"
    if package in SUBPACKAGES:
        assert "import" in docstring.lower(), f"device/{package}/__init__.py does not say what it may import"


def test_the_running_unit_reaches_no_other_room() -> None:
    """Read from the imports themselves, not the table: what ships to the Pi is what it runs."""
    foreign = {"lab", "evaluation", "ops", "consumers"}
    reached = [
        f"{path.relative_to(DEVICE.parent)} -> {target}"
        for path in sorted((DEVICE / "runtime").rglob("*.py"))
        for target in imported_device_modules(path.read_text())
        if layer_of_module(target) in foreign
    ]
    assert reached == []
