"""Issue 16's acceptance: five consecutive starts of a unit run every model from the same CPU file; and
`make bench` says which file each model runs from and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import unit_config

from device.config import UnitConfig
from device.lab.bench import cpu_variant_report, pad_models
from device.models.cpu_variant import CPU_VARIANT_CACHE
from device.vision.faces import load_stages
from device.vision.liveness import open_liveness

TIMED = {"float_ms", "int8_ms", "pairs", "int8_speedup", "block_int8_speedups"}


@pytest.fixture(scope="module")
def unit_with_state(tmp_path_factory: pytest.TempPathFactory) -> UnitConfig:
    state_dir = tmp_path_factory.mktemp("state")
    return unit_config(models={"cpu_variant": "auto"}, unit={"state_dir": str(state_dir)})


@pytest.fixture(scope="module")
def report(unit_with_state: UnitConfig) -> dict[str, dict[str, Any]]:
    stages = load_stages(unit_with_state)
    return cpu_variant_report({**stages.models, **pad_models(open_liveness(unit_with_state))})


@pytest.mark.slow
def test_bench_names_each_models_cpu_file_with_the_reason_and_timing(
    report: dict[str, dict[str, Any]],
) -> None:
    assert set(report) == {"detector", "embedder", "minifasnet_v2", "minifasnet_v1se", "face_landmark"}
    for role in ("detector", "embedder", "minifasnet_v2", "minifasnet_v1se"):
        assert report[role]["variant"] in ("float", "int8")
        assert "margin" in report[role]["reason"], report[role]
        assert set(report[role]) == {"variant", "reason", *TIMED}
        assert report[role]["float_ms"] > 0 and report[role]["int8_ms"] > 0
    assert report["face_landmark"] == {"variant": "float", "reason": "only CPU file"}
    json.dumps(report)  # it goes into bench.json as it is


def test_the_presentation_attack_models_keep_their_choice_in_the_units_state_dir(
    unit_with_state: UnitConfig, report: dict[str, dict[str, Any]]
) -> None:
    kept = json.loads((Path(unit_with_state.unit.state_dir) / CPU_VARIANT_CACHE).read_text())
    assert set(kept) == {"blazeface_full_range", "dlib_resnet_v1", "minifasnet_v2", "minifasnet_v1se"}
    assert kept["minifasnet_v2"]["variant"] == report["minifasnet_v2"]["variant"]
    again = pad_models(open_liveness(unit_with_state))
    assert again["minifasnet_v2"].health()["cpu_variant_reason"].startswith("kept from first start")


def opened_at_start(config: UnitConfig) -> dict[str, Any]:
    """What a unit start opens (``device run``: the stages, then the PAD stage), by model."""
    return {**load_stages(config).models, **pad_models(open_liveness(config))}


@pytest.mark.slow
def test_five_consecutive_unit_starts_run_every_model_from_the_same_cpu_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = unit_config(models={"cpu_variant": "auto"}, unit={"state_dir": str(state_dir)})
    starts = [opened_at_start(config) for _ in range(5)]
    first, *later = starts
    for models in later:
        assert {name: model.variant for name, model in models.items()} == {
            name: model.variant for name, model in first.items()
        }
        for name, model in models.items():
            reason = model.health()["cpu_variant_reason"]
            assert reason == "only CPU file" or reason.startswith("kept from first start"), (name, reason)
            # a kept choice still says why it was made (what health carries)
            assert model.health()["cpu_variant_basis"] == first[name].health()["cpu_variant_basis"], name
