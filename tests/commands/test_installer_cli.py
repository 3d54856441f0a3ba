"""The installer's view of the CLI (issue 17): which config a command uses, models found from any folder,
quiet output (no runtime banner, no INFO lines), "no config given" instead of cwd-relative surprises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import MODELS

from device.cli import main
from device.config import load_config
from device.discovery import CONFIG_ENV, ConfigChoice, choose_config, load_chosen_config
from device.models.manifest import load_manifest
from device.models.native_stderr import split_banners

BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def device_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "device", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- config discovery --------------------------------------------------------------------------------
def test_config_order_is_flag_then_environment_then_system_file(tmp_path: Path) -> None:
    system = tmp_path / "etc-unit.toml"
    env = {CONFIG_ENV: str(tmp_path / "env.toml")}
    flag = tmp_path / "flag.toml"
    assert choose_config(flag, env, system) == ConfigChoice(flag, "--config")
    assert choose_config(None, env, system) == ConfigChoice(tmp_path / "env.toml", CONFIG_ENV)
    assert choose_config(None, {}, system) == ConfigChoice(None, "none")
    system.write_text("")
    assert choose_config(None, {}, system) == ConfigChoice(system, "system")
    assert choose_config(None, {CONFIG_ENV: "  "}, system) == ConfigChoice(system, "system")


def test_the_environment_variable_names_the_config_a_command_uses(tmp_path: Path) -> None:
    config = tmp_path / "unit.toml"
    config.write_text('[unit]\nid = "lobby-env"\n')
    result = device_cli("config", "check", cwd=tmp_path, env={CONFIG_ENV: str(config)})
    assert result.returncode == 0, result.stderr
    assert "lobby-env" in result.stdout


def test_an_environment_variable_naming_a_missing_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    result = device_cli("config", "check", cwd=tmp_path, env={CONFIG_ENV: str(tmp_path / "nope.toml")})
    assert result.returncode == 2
    assert CONFIG_ENV in result.stderr and "does not exist" in result.stderr


@pytest.mark.skipif(Path("/etc/entrance-camera/unit.toml").exists(), reason="this machine is a unit")
@pytest.mark.parametrize(
    "command", [["subjects", "list"], ["run"], ["config", "check"], ["identify", "x.jpg"], ["doctor"]]
)
@pytest.mark.slow
def test_commands_that_need_the_unit_say_no_config_given(tmp_path: Path, command: list[str]) -> None:
    result = device_cli(*command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no config given: pass --config PATH"), result.stderr
    assert "master.key" not in result.stderr and "video file" not in result.stderr


def test_models_default_to_the_installed_project_not_the_working_directory(tmp_path: Path) -> None:
    without_file = load_chosen_config(ConfigChoice(None, "none"))
    assert without_file.models.dir == MODELS.resolve()
    config = tmp_path / "unit.toml"
    config.write_text('[unit]\nid = "lobby"\n')
    assert load_chosen_config(ConfigChoice(config, "--config")).models.dir == MODELS.resolve()
    config.write_text('[models]\ndir = "mine"\n')
    assert load_chosen_config(ConfigChoice(config, "--config")).models.dir == tmp_path / "mine"


@pytest.mark.skipif(Path("/etc/entrance-camera/unit.toml").exists(), reason="this machine is a unit")
@pytest.mark.slow
def test_compare_works_from_any_directory_and_prints_no_banner_or_info_lines(
    tmp_path: Path, face_images: dict[str, Path]
) -> None:
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    result = device_cli(
        "compare", str(face_images["obama.jpg"]), str(face_images["obama3.jpg"]), cwd=elsewhere
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("match")
    assert "XNNPACK" not in result.stderr
    assert " INFO " not in result.stderr
    assert result.stderr == ""


@pytest.mark.skipif(Path("/etc/entrance-camera/unit.toml").exists(), reason="this machine is a unit")
@pytest.mark.slow
def test_identify_works_from_any_directory_without_the_banner(
    tmp_path: Path, face_images: dict[str, Path]
) -> None:
    from gallery_helpers import init_unit

    config = init_unit(tmp_path).config_path
    # init writes the models folder it found; without it the unit must still find the installed project's
    lines = config.read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("dir = ") for line in lines)
    config.write_text("\n".join(line for line in lines if not line.startswith("dir = ")) + "\n", "utf-8")
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    assert not (elsewhere / "models").exists()
    result = device_cli("identify", str(face_images["obama.jpg"]), "--config", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert f"{face_images['obama.jpg']} face 1: unknown" in result.stdout  # nobody enrolled yet
    assert "XNNPACK" not in result.stderr and " INFO " not in result.stderr
    assert result.stderr.strip() == "note: no active subject is enrolled; every face is unknown"


# --- the runtime banner --------------------------------------------------------------------------------
def test_the_runtime_prints_its_banner_on_fd_2_and_the_wrapper_removes_only_that(tmp_path: Path) -> None:
    # The runtime prints the banner once per process, so each variant runs in a fresh interpreter.
    manifest = load_manifest(MODELS)
    path = MODELS / manifest.models["blazeface_full_range"].files["float"].path
    raw = (
        "from device.models.interpreter import tflite_runtime\n"
        f"tflite_runtime().Interpreter(model_path={str(path)!r}, num_threads=1).allocate_tensors()\n"
    )
    wrapped = (
        "import os\n"
        "from pathlib import Path\n"
        "from device.models.interpreter import load_interpreter\n"
        "from device.models.native_stderr import without_runtime_banner\n"
        f"load_interpreter(Path({str(path)!r}), 1)\n"
        "with without_runtime_banner():\n"
        "    os.write(2, b'W runtime: something the installer must see\\n')\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
        for code in (raw, wrapped)
    ]
    assert BANNER in runs[0].stderr  # the runtime does print it, so the next assert means something
    assert "XNNPACK" not in runs[1].stderr
    assert "something the installer must see" in runs[1].stderr


def test_split_banners_matches_exact_lines_only() -> None:
    captured = f"{BANNER}\nINFO: Created TensorFlow Lite XNNPACK delegate for GPU.\nERROR: x\n".encode()
    kept, removed = split_banners(captured)
    assert removed == [BANNER]
    assert kept == b"INFO: Created TensorFlow Lite XNNPACK delegate for GPU.\nERROR: x\n"


def test_interactive_commands_log_warnings_only_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    config = tmp_path / "unit.toml"
    config.write_text('[unit]\nid = "quiet"\n')
    assert main(["config", "check", "--config", str(config)]) == 0
    assert logging.getLogger().level == logging.WARNING


# --- forget asks first ----------------------------------------------------------------------------------
def test_forget_names_the_person_and_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gallery_helpers import enrol_random, init_unit

    unit = init_unit(tmp_path)
    info, _ = enrol_random(unit.store(), "Ada Resident", seed=5)
    capsys.readouterr()
    assert main(["--config", str(unit.config_path), "forget", info.subject_id]) == 2
    refusal = capsys.readouterr().err
    assert "Ada Resident" in refusal and "--yes" in refusal and "cannot be undone" in refusal
    assert [s.subject_id for s in unit.store().subjects()] == [info.subject_id]  # nothing happened
    assert main(["--config", str(unit.config_path), "forget", info.subject_id, "--yes"]) == 0
    assert f"forgot Ada Resident ({info.subject_id})" in capsys.readouterr().out
    assert unit.store().subjects() == []


# --- make help ------------------------------------------------------------------------------------------
def test_make_help_lists_every_target_of_the_makefile() -> None:
    import re

    repo = MODELS.parent
    makefile = (repo / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):(?!=)", makefile, flags=re.MULTILINE))
    assert {"run", "test", "dev-broker", "broker-check", "reliability", "edgetpu-models"} <= targets
    result = subprocess.run(["make", "-s", "help"], cwd=repo, capture_output=True, text=True, check=True)
    listed = set(re.findall(r"(?:^make |/ )([a-z][a-z-]*)", result.stdout, flags=re.MULTILINE))
    assert targets - listed == set()


# --- plain-language messages ------------------------------------------------------------------------------
def test_a_typo_in_a_key_gets_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "unit.toml"
    config.write_text('[capture]\nsoruce = "x.mp4"\n[mqtt.tls]\ncafile = "ca.crt"\n[matching]\nzzz = 1\n')
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "capture.soruce: unknown key (did you mean 'source'?)" in err
    assert "mqtt.tls.cafile: unknown key (did you mean 'ca_file'?)" in err
    assert "matching.zzz: unknown key (known here: threshold," in err


def test_a_key_under_the_wrong_table_says_which_table_it_belongs_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "unit.toml"
    config.write_text(
        'ha_discovery = true\n[unit]\nha_discovery = true\n[capture]\nbackend = "file"\nsource = "x.mp4"\n'
        'ha_discovery = true\n[mqtt]\nca_file = "ca.crt"\n'
    )
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "  - ha_discovery: unknown key (it belongs in [mqtt])" in err
    assert "unit.ha_discovery: unknown key (it belongs in [mqtt])" in err
    assert "capture.ha_discovery: unknown key (it belongs in [mqtt])" in err
    assert "mqtt.ca_file: unknown key (it belongs in [mqtt.tls])" in err


def test_messages_say_rules_in_words_not_regexes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "unit.toml"
    config.write_text('[unit]\nid = "Lobby 1"\n[mqtt]\ntopic_prefix = "a b"\n')
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "lowercase letters, digits and '-'" in err and "levels separated by '/'" in err
    assert "^[" not in err
    assert main(["init", "--dir", str(tmp_path / "u"), "--unit-id", "Lobby 1"]) == 1
    err = capsys.readouterr().err
    assert "lowercase letters" in err and "^[" not in err


def test_a_bad_expiry_date_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["enroll", "--name", "A", "--images", "a.jpg", "--consent-ref", "F", "--expires", "30/06/2027"])
    err = capsys.readouterr().err
    assert "write it as YYYY-MM-DD" in err and "fromisoformat" not in err


# --- examples agree with the installer ----------------------------------------------------------------------
def test_example_configs_use_the_paths_the_installer_writes() -> None:
    import tomllib

    repo = MODELS.parent
    text = (repo / "deploy/unit/unit.toml.in").read_text()
    template = tomllib.loads(text.replace("@UNIT_ID@", "x").replace("@KEY_SOURCE@", "file"))
    installed_paths = {
        ("unit", "state_dir"): template["unit"]["state_dir"],
        ("models", "dir"): template["models"]["dir"],
        ("gallery", "path"): template["gallery"]["path"],
        ("gallery", "master_key_path"): template["gallery"]["master_key_path"],
        ("mqtt", "outbox_path"): template["mqtt"]["outbox_path"],
    }
    checked = 0
    for example in sorted((repo / "firmware_config/examples").glob("*.toml")):
        data = tomllib.loads(example.read_text())
        if not str(data.get("unit", {}).get("state_dir", "")).startswith("/"):
            continue  # a development example (relative paths), not an installed unit
        for (section, key), expected in installed_paths.items():
            if key in data.get(section, {}):
                assert data[section][key] == expected, f"{example.name}: [{section}] {key}"
                checked += 1
    assert checked >= 6


# --- every config key described --------------------------------------------------------------------------
def test_every_config_key_is_described_in_the_defaults_file_and_the_schema() -> None:
    import json

    from device.config_docs import defaults_toml, fields, undocumented_keys

    assert undocumented_keys() == [], "give these fields a description in device/config.py"
    repo = MODELS.parent
    defaults = (repo / "firmware_config/unit.defaults.toml").read_text()
    assert defaults == defaults_toml(), "regenerate: python -m device.config_docs defaults > ..."
    schema = json.loads((repo / "firmware_config/unit-config.schema.json").read_text())
    visited = set()
    for key, field, _ in fields():
        text = field.description
        assert (text and f"# {text}" in defaults) or f"{key.split('.')[-1]}: {text}" in defaults, key
        # every model the key may live in (the capture section: one per backend) describes it
        nodes = [schema]
        for part in key.split("."):
            props = [node["properties"][part] for node in nodes if part in node["properties"]]
            assert props and all("description" in prop for prop in props), f"{key}: no description"
            refs = [
                ref
                for prop in props
                for ref in [prop.get("$ref")]
                + [a.get("$ref") for a in prop.get("anyOf", []) + prop.get("oneOf", [])]
                if ref
            ]
            nodes = [schema["$defs"][ref.split("/")[-1]] for ref in refs]
        visited.add(key)
    assert {"capture.loop", "capture.source", "mqtt.tls.ca_file"} <= visited  # variants and nesting


# --- the demo: quiet, and it says what it does with its folder ---------------------------------------
@pytest.mark.slow
def test_the_demo_prints_no_banner_and_says_its_temporary_folder_is_removed(tmp_path: Path) -> None:
    import re

    result = device_cli("demo", "--fast", "--no-broker", cwd=tmp_path, env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "XNNPACK" not in result.stdout + result.stderr
    assert " INFO " not in result.stderr
    named = re.search(r"^demo folder (\S+)$", result.stdout, flags=re.MULTILINE)
    assert named is not None
    assert f"demo folder {named.group(1)} removed (--keep or --dir DIR keeps it)" in result.stdout
    assert not Path(named.group(1)).exists()


def test_init_writes_the_trusted_commanders_file_into_the_mqtt_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trusted = tmp_path / "commanders.json"
    assert main(["command", "key", "--signing-key", str(tmp_path / "op.key"), "--name", "operator",
                 "--register", str(trusted)]) == 0  # fmt: skip
    mqtt_block = tmp_path / "broker.mqtt.toml"
    mqtt_block.write_text('[mqtt]\nhost = "broker.example"\n\n[mqtt.tls]\nca_file = "/etc/ca.crt"\n')
    for name, extra in (("plain", []), ("with-broker", ["--mqtt", str(mqtt_block)])):
        unit_dir = tmp_path / name
        assert main(["init", "--dir", str(unit_dir), "--operator", "t", "--command-keys", str(trusted),
                     *extra]) == 0  # fmt: skip
        config = load_config(unit_dir / "unit.toml")
        assert config.mqtt.command_keys == trusted.resolve()
    capsys.readouterr()
    assert main(["init", "--dir", str(tmp_path / "u"), "--command-keys", str(tmp_path / "none.json")]) == 1
    assert "device command key --register" in capsys.readouterr().err
