"""`make ha-check`: the README's Home Assistant section against a real Home Assistant.

What a Home Assistant user does, headless: a pinned Home Assistant (its own venv, ``--skip-pip`` so it
never installs anything at run time) is onboarded through its HTTP API, its MQTT integration is set up
through the integration's own config flow (TLS with the project's CA, the ``home-assistant`` client
certificate, MQTT 5) against the project's broker config, and the automations are exactly the YAML
blocks of the README's "Home Assistant" section (only the resident's subject id is replaced by the one
this run enrols). A unit (id ``lobby-1``, ``ha_discovery`` and ``ha_last_seen`` on) then runs the
demo clip (resident, visitor, print attack), and everything is asserted through HA's own APIs:

- HA's config check accepts the configuration; every README automation is loaded and enabled;
- the device (manufacturer, sw_version, serial number), its entities and its four device triggers;
- the event entity's states carry each decision; the sensors have states, not ``unknown``;
- the diagnostic sensors (fps, outbox depth, alarms, presentation attacks) are numbers, the CPU
  temperature a number or ``unknown``; with ``ha_last_seen = true`` the resident's "Last seen" sensor
  shows the minute of the recognition;
- the README's id -> name mapping puts "Alice" in the logbook once per recognition, and nothing Home
  Assistant's broker identity can read of the unit carries that name or the one it was enrolled with;
- each README automation fires exactly once per matching event the unit published, and never on a
  unit restart (SIGTERM), a last-will disconnect (SIGKILL) or a Home Assistant restart; a control
  automation with the plain state trigger the README used to show does fire there, so the check can
  tell;
- Home Assistant's log has no error and no MQTT warning.

    .venv/bin/python tests/ha/ha_check.py --ha-python .venv-ha/bin/python [--keep DIR]

Prints one line per step and a JSON summary; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.broker.local import HOST, LocalBroker, free_port  # noqa: E402
from device.lab.demo import DEMO_NAME  # noqa: E402

UNIT = "lobby-1"
README_SUBJECT = "s-7f3a9c"  # the README's example resident; replaced by the one this run enrols
VISIT = "event.entrance_camera_lobby_1_visit"
CONNECTED = "binary_sensor.entrance_camera_lobby_1_connected"
PROBLEM = "binary_sensor.entrance_camera_lobby_1_problem"
DOOR = "lock.lobby_door"
CONTROL = "automation.control_plain_state_trigger"
WATCHED = (VISIT, CONNECTED, PROBLEM, DOOR)
HA_START_S = 240.0
STEP_S = 60.0

# Which published events each README automation must fire for (by its `id`). A README automation the
# check does not know fails the check, so a new example comes with its expectation.
EXPECTED: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "lobby_resident_door": lambda e, resident: e["type"] == "recognized" and e["subject"] == resident,
    "lobby_attack_alert": lambda e, _r: e["type"] == "presentation_attack",
    "lobby_unknown_visitor": lambda e, _r: e["type"] == "unknown",
    "lobby_resident_named": lambda e, resident: e["type"] == "recognized" and e["subject"] == resident,
}
README_NAME = "Alice"  # the name the README's mapping gives the resident, in Home Assistant only
# The diagnostic sensors from the unit's health: a number once the unit reported (the CPU temperature
# may be unknown: a machine without a thermal zone).
DIAGNOSTICS = ("frames_per_second", "outbox_depth", "alarms", "presentation_attacks")

# The check's own Home Assistant config around the README's automations: HTTP on loopback, the APIs the
# check uses, a template lock for the README's lock.lobby_door, and the control automation.
CONFIGURATION = """\
homeassistant:
  name: ha-check
  time_zone: UTC
  country: CH
  unit_system: metric
  currency: CHF
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
logbook:
websocket_api:
logger:
  default: warning
input_boolean:
  lobby_door_locked:
    name: Lobby door locked
    initial: true
lock:
  - platform: template
    name: Lobby door
    value_template: "{{{{ is_state('input_boolean.lobby_door_locked', 'on') }}}}"
    lock:
      - action: input_boolean.turn_on
        target:
          entity_id: input_boolean.lobby_door_locked
    unlock:
      - action: input_boolean.turn_off
        target:
          entity_id: input_boolean.lobby_door_locked
automation: !include automations.yaml
automation control: !include control.yaml
"""

# What the README showed before issue 31: a plain state trigger on the event entity.
CONTROL_AUTOMATION = f"""\
- id: control_plain_state_trigger
  alias: "Control: plain state trigger"
  triggers:
    - trigger: state
      entity_id: {VISIT}
  conditions:
    - condition: template
      value_template: "{{{{ trigger.to_state.attributes.event_type == 'recognized' }}}}"
  actions: []
"""


class CheckError(Exception):
    pass


class HomeAssistantExitedError(Exception):
    """Not a CheckError: waits retry on those, and this one will not get better."""


def step(text: str) -> None:
    print(f"ha-check: {text}", flush=True)


def wait_until(what: str, condition: Callable[[], Any], timeout: float = STEP_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError, CheckError):
            if result := condition():
                return result
        time.sleep(0.3)
    raise CheckError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- The README ------------------------------------------------------------------------------------
def readme_section(readme: str, title: str = "## Home Assistant") -> str:
    start = readme.index(f"\n{title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def yaml_blocks(section: str) -> list[str]:
    """The ```yaml blocks of a README section, dedented (they sit inside list items)."""
    blocks = []
    for match in re.finditer(r"^( *)```yaml\n(.*?)^\1```", section, re.M | re.S):
        indent = len(match.group(1))
        blocks.append("".join(line[indent:] for line in match.group(2).splitlines(keepends=True)))
    return blocks


def readme_automation_ids(blocks: list[str]) -> list[str]:
    return [m.group(1) for block in blocks for m in re.finditer(r"^- id: (\S+)$", block, re.M)]


# --- Home Assistant over HTTP ----------------------------------------------------------------------
@dataclass
class HomeAssistant:
    python: Path
    config_dir: Path
    port: int
    token: str = ""
    automations: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def start(self) -> None:
        hass = self.python.with_name("hass")
        self.process = subprocess.Popen(
            [str(hass), "--config", str(self.config_dir), "--skip-pip", "--log-no-color",
             "--log-file", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip

        def running() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise HomeAssistantExitedError(
                    f"Home Assistant exited ({self.process.returncode}); see {self.log_file}"
                )
            if not self.token:
                return self.request("GET", "/api/onboarding", auth=False) is not None
            return bool(self.request("GET", "/api/config").get("state") == "RUNNING")

        wait_until("Home Assistant to answer", running, HA_START_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(
        self, method: str, path: str, body: Any = None, *, auth: bool = True, form: bool = False
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None
        if body is not None and form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise CheckError(f"{method} {path}: HTTP {error.code} {error.read().decode()[:300]}") from None
        return json.loads(text) if text else {}

    def upload(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            self.url + "/api/file_upload", data=body, method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["file_id"])

    def onboard(self) -> None:
        """The onboarding a new user clicks through, over the same HTTP API the frontend uses."""
        client_id = f"{self.url}/"
        user = self.request(
            "POST", "/api/onboarding/users", auth=False,
            body={"client_id": client_id, "name": "ha-check", "username": "ha-check",
                  "password": uuid.uuid4().hex, "language": "en"},
        )  # fmt: skip
        tokens = self.request(
            "POST", "/auth/token", auth=False, form=True,
            body={"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
        )  # fmt: skip
        self.token = tokens["access_token"]
        # The core_config step also sets up the default cloud integrations (weather, Google Translate
        # text-to-speech), which need the internet; the location is in configuration.yaml instead.
        self.request("POST", "/api/onboarding/analytics", body={})
        self.request(
            "POST", "/api/onboarding/integration", body={"client_id": client_id, "redirect_uri": client_id}
        )
        wait_until("HA to run", lambda: self.request("GET", "/api/config").get("state") == "RUNNING")

    def set_up_mqtt(self, broker: LocalBroker) -> dict[str, Any]:
        """Settings → Devices & services → Add → MQTT, advanced options, as the README says."""
        flow = self.request("POST", "/api/config/config_entries/flow",
                            body={"handler": "mqtt", "show_advanced_options": True})  # fmt: skip
        basic = {"broker": "localhost", "port": broker.port}
        # The "Advanced options" box, then the advanced form (which no longer has that box).
        flow = self.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            body={**basic, "advanced_options": True},
        )
        choices = {**basic, "set_client_cert": True, "set_ca_cert": "custom", "protocol": "5",
                   "tls_insecure": False, "transport": "tcp"}  # fmt: skip
        flow = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", body=choices)
        cert, key = broker.cert_for("home-assistant")
        files = {"certificate": self.upload(broker.ca_file), "client_cert": self.upload(cert),
                 "client_key": self.upload(key)}  # fmt: skip
        result = self.request(
            "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", body={**choices, **files}
        )
        if result.get("type") != "create_entry":
            raise CheckError(f"MQTT config flow did not create an entry: {result}")
        return dict(result)

    def states(self) -> dict[str, dict[str, Any]]:
        return {state["entity_id"]: state for state in self.request("GET", "/api/states")}

    def state(self, entity_id: str) -> str | None:
        return self.states().get(entity_id, {}).get("state")


# --- Watching HA's event bus (ha_watch.py in HA's venv) --------------------------------------------
@dataclass
class Watcher:
    ha: HomeAssistant
    lines: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.ha.python), str(Path(__file__).with_name("ha_watch.py")), self.ha.url, self.ha.token,
             *WATCHED],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(
            "the websocket subscription",
            lambda: any(line["kind"] == "subscribed" for line in list(self.lines)),
        )

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def triggered(self, automation: str) -> int:
        return sum(
            1
            for line in list(self.lines)
            if line["kind"] == "automation_triggered" and line["entity_id"] == automation
        )

    def states_of(self, entity_id: str) -> list[dict[str, Any]]:
        lines = list(self.lines)
        return [line for line in lines if line["kind"] == "state_changed" and line["entity_id"] == entity_id]


# --- The unit ---------------------------------------------------------------------------------------
class EventLog:
    """A consumer (``backend``) recording every event the unit published: the ground truth."""

    def __init__(self, broker: LocalBroker) -> None:
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for("backend")
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_message = lambda _c, _u, m: self.events.append(json.loads(m.payload))
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{broker.prefix}/{UNIT}/events", qos=1)
        if not self._ready.wait(10):
            raise CheckError("the event log could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class BrokerView:
    """Every payload Home Assistant's broker identity can read of the unit (events, status, health and
    all of its discovery topics): what an attacker holding that identity would see."""

    def __init__(self, broker: LocalBroker) -> None:
        self.payloads: list[bytes] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        cert, key = broker.cert_for("home-assistant")
        self.client.tls_set(str(broker.ca_file), str(cert), str(key))
        self.client.on_message = lambda _c, _u, m: self.payloads.append(bytes(m.payload))
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        topics = ["homeassistant/#", *(f"{broker.prefix}/{UNIT}/{t}" for t in ("events", "status", "health"))]
        self.client.subscribe([(topic, 1) for topic in topics])
        if not self._ready.wait(10):
            raise CheckError("the broker view could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class UnitConfigs:
    demo: Path  # the demo clip: resident, visitor, print attack
    resident: Path  # the resident alone: the last event before a restart is the door's
    idle: Path  # an empty hallway for a few minutes: the unit online, deciding nothing


def prepare_unit(work: Path, broker: LocalBroker) -> tuple[UnitConfigs, str]:
    """The demo's unit (enrolled resident, generated clip) as lobby-1 on the broker, plus configs on a
    resident-only clip and an empty hallway. Returns the configs and the resident's subject id."""
    from device import cli
    from device.evaluation import fixtures
    from device.lab.demo import RESIDENT_CLIP_PHOTO, prepare, toml_text
    from device.lab.democlip import demo_walks, hallway, iter_script_frames, largest_face, write_mjpeg
    from device.runtime.service import open_stages
    from device.vision.faces import FaceAnalyzer

    mqtt_section = {**broker.mqtt_config(UNIT), "ha_discovery": True, "ha_last_seen": True}
    unit, stages, clip, resident = prepare(
        work / "unit",
        open_stages,
        lambda argv: cli.main([*argv, "--unit-id", UNIT]),
        {"mqtt": mqtt_section, "models": {"cpu_variant": "float"}},
    )
    step(
        f"unit {UNIT}: resident {resident}, clip of {clip.frames} frames "
        f"({', '.join(v.label for v in clip.visits)})"
    )
    photo = fixtures.load_rgb(RESIDENT_CLIP_PHOTO)
    walk = demo_walks(photo, photo)[0]
    located = [(walk, largest_face(FaceAnalyzer.from_stages(stages).detector.detect, photo, walk.label))]
    background = hallway(*clip.size)
    resident_clip = work / "unit" / "resident.avi"
    write_mjpeg(
        resident_clip, iter_script_frames(background, located, [], empty_frames=15), clip.fps, clip.size
    )
    idle_clip = work / "unit" / "hallway.avi"
    write_mjpeg(idle_clip, (hallway(320, 240) for _ in range(900)), 5.0, (320, 240))
    data = tomllib.loads(unit.config_path.read_text())

    def variant(name: str, source: Path, fps: float) -> Path:
        path = unit.config_path.with_name(name)
        path.write_text(
            toml_text({**data, "capture": {**data["capture"], "source": str(source), "fps": fps}})
        )
        return path

    configs = UnitConfigs(
        unit.config_path,
        variant("resident.toml", resident_clip, clip.fps),
        variant("idle.toml", idle_clip, 5.0),
    )
    return configs, resident


@contextlib.contextmanager
def unit_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "device", "run", "--config", str(config)], stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_to_end(config: Path, log: Path) -> None:
    with unit_process(config, log) as unit:
        wait_until("the unit to finish its clip", lambda: unit.poll() is not None, 180)
    if unit.returncode != 0:
        raise CheckError(f"the unit exited {unit.returncode}; see {log}")


def diagnostic_states(ha: HomeAssistant) -> dict[str, str]:
    """The health's diagnostic sensors, when every one is a number (CPU temperature: or unknown)."""
    states = ha.states()
    found = {
        name: states.get(f"sensor.entrance_camera_lobby_1_{name}", {}).get("state") for name in DIAGNOSTICS
    }
    temperature = states.get("sensor.entrance_camera_lobby_1_cpu_temperature", {}).get("state")

    def number(value: Any) -> bool:
        try:
            float(value)
        except (TypeError, ValueError):
            return False
        return True

    ok = all(number(value) for value in found.values()) and (number(temperature) or temperature == "unknown")
    return {**found, "cpu_temperature": temperature} if ok else {}


def last_seen_entity(resident: str) -> str:
    return "sensor.entrance_camera_lobby_1_last_seen_" + resident.lower().replace("-", "_")


def named_logbook_entries(ha: HomeAssistant, since: str) -> list[dict[str, Any]]:
    entries = ha.request("GET", f"/api/logbook/{urllib.parse.quote(since)}")
    return [e for e in entries if e.get("name") == README_NAME and "lobby" in str(e.get("message"))]


def accelerator_states(ha: HomeAssistant) -> dict[str, str]:
    """The accelerator sensors, when every one has a state (not unknown or unavailable)."""
    found = {
        n: s["state"] for n, s in ha.states().items() if n.startswith("sensor.entrance_camera_lobby_1_acc")
    }
    return found if found and all(v not in ("unknown", "unavailable") for v in found.values()) else {}


# --- The check --------------------------------------------------------------------------------------
@dataclass
class Results:
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def expect(self, ok: bool, what: str) -> None:
        step(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def write_ha_config(config_dir: Path, port: int) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=port))
    (config_dir / "automations.yaml").write_text("[]\n")
    (config_dir / "control.yaml").write_text(CONTROL_AUTOMATION)


def write_automations(resident: str) -> tuple[str, list[str]]:
    """The README's YAML blocks as automations.yaml (written once MQTT is set up); their ids."""
    blocks = yaml_blocks(readme_section((REPO / "README.md").read_text()))
    return "".join(blocks).replace(README_SUBJECT, resident), readme_automation_ids(blocks)


def check_device(ha: HomeAssistant, results: Results) -> None:
    query = subprocess.run(
        [str(ha.python), str(Path(__file__).with_name("ha_watch.py")), ha.url, ha.token, "--query",
         f"entrance-camera-{UNIT}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if query.returncode != 0:
        results.expect(False, f"device query: {query.stderr.strip()[-300:]}")
        return
    found = json.loads(query.stdout)
    device = found["device"]
    results.expect(
        device["manufacturer"] == "entrance-camera project" and device["serial_number"] == UNIT
        and bool(device["sw_version"]),
        f"device {device['name']!r}: manufacturer {device['manufacturer']!r}, "
        f"serial number {device['serial_number']}, sw {device['sw_version']}",
    )  # fmt: skip
    kinds = sorted(trigger["type"] for trigger in found["triggers"] if trigger.get("domain") == "mqtt")
    results.expect(
        kinds == sorted(["recognized", "unknown", "insufficient_quality", "presentation_attack"]),
        f"four device triggers: {kinds}",
    )
    results.figures["entities"] = sorted(found["entities"])


def run(args: argparse.Namespace) -> Results:
    results = Results()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ha-check-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(work / "broker")
    broker.start()
    ha = HomeAssistant(args.ha_python, work / "ha", free_port())
    watcher: Watcher | None = None
    events: EventLog | None = None
    view: BrokerView | None = None
    started = time.monotonic()
    try:
        configs, resident = prepare_unit(work, broker)
        write_ha_config(ha.config_dir, ha.port)
        ha.automations, readme_ids = write_automations(resident)
        results.expect(
            sorted(readme_ids) == sorted(EXPECTED), f"README automations {readme_ids} are the checked ones"
        )
        ha.start()
        ha.onboard()
        results.figures["ha_first_start_s"] = round(time.monotonic() - started, 1)
        step(f"Home Assistant {ha.request('GET', '/api/config')['version']} onboarded on {ha.url}")
        entry = ha.set_up_mqtt(broker)
        step(f"MQTT integration set up through its config flow: {entry['title']}")
        wait_until("the MQTT entry loaded", lambda: ha.request(
            "GET", "/api/config/config_entries/entry?domain=mqtt")[0]["state"] == "loaded")  # fmt: skip
        # As a user: MQTT first, then the automations pasted into automations.yaml and reloaded.
        (ha.config_dir / "automations.yaml").write_text(ha.automations)
        ha.request("POST", "/api/services/automation/reload", body={})
        check = ha.request("POST", "/api/config/core/check_config")
        results.expect(check.get("result") == "valid", f"HA's config check: {check}")
        states = ha.states()
        for automation_id in readme_ids:
            entity = next((s for s in states.values() if s["attributes"].get("id") == automation_id), None)
            results.expect(
                entity is not None and entity["state"] == "on",
                f"README automation {automation_id} loaded, on",
            )
        ids = {
            s["attributes"].get("id"): name for name, s in states.items() if name.startswith("automation.")
        }
        watcher = Watcher(ha)
        watcher.start()
        events = EventLog(broker)
        view = BrokerView(broker)
        check_started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        logs = work / "unit.log"

        step("unit: the demo clip (resident, visitor, print attack)")
        run_to_end(configs.demo, logs)
        wait_until("HA to see the unit offline", lambda: ha.state(CONNECTED) == "off")
        published = [(e["type"], e["subject"]) for e in events.events]
        results.expect(len(published) == 3, f"the unit published {published}")
        check_device(ha, results)
        seen = [
            (line["attributes"].get("event_type"), line["attributes"].get("subject"))
            for line in watcher.states_of(VISIT)
            if line["to"] not in ("unavailable", "unknown", None)
        ]
        results.expect(
            seen == published, f"{VISIT} changed once per event, with its type and subject: {seen}"
        )
        seen_entity = last_seen_entity(resident)
        last_seen = wait_until(
            "the resident's last seen",
            lambda: ha.state(seen_entity) not in (None, "unknown", "unavailable") and ha.state(seen_entity),
            30,
        )
        recognised_at = next(e["ts"] for e in events.events if e["type"] == "recognized")
        results.expect(
            str(last_seen)[:16] == recognised_at[:16],
            f"{seen_entity}: {last_seen} (recognised at {recognised_at})",
        )

        step("unit: the resident alone (the door's event is the last one before the restarts)")
        run_to_end(configs.resident, logs)
        wait_until("HA to see the unit offline", lambda: ha.state(CONNECTED) == "off")

        step("unit restart: online on an empty hallway, then SIGTERM")
        with unit_process(configs.idle, logs) as unit:
            wait_until("HA to see the unit online", lambda: ha.state(CONNECTED) == "on")
            wait_until("the accelerator sensors", lambda: accelerator_states(ha), 15)
            online = {n: s["state"] for n, s in ha.states().items() if "entrance_camera_lobby_1" in n}
            results.figures["entities_online"] = online
            results.expect(bool(accelerator_states(ha)), f"accelerator sensors have states: {online}")
            diagnostics = wait_until("the diagnostic sensors", lambda: diagnostic_states(ha), 15)
            results.expect(bool(diagnostics), f"diagnostic sensors have numbers: {diagnostics}")
            results.expect(online.get(PROBLEM) in ("on", "off"), f"problem sensor: {online.get(PROBLEM)}")
            time.sleep(2)
            unit.send_signal(signal.SIGTERM)
            unit.wait(30)
        wait_until("HA to see the unit offline", lambda: ha.state(CONNECTED) == "off")

        step("last will: online again, then SIGKILL")
        with unit_process(configs.idle, logs) as unit:
            wait_until("HA to see the unit online", lambda: ha.state(CONNECTED) == "on")
            time.sleep(3)
            unit.kill()
            unit.wait()
        wait_until("the last will in HA", lambda: ha.state(CONNECTED) == "off")
        results.expect(ha.state(VISIT) == "unavailable", f"{VISIT} unavailable after the last will")

        step("Home Assistant restart while the unit is online")
        with unit_process(configs.idle, logs) as unit:
            wait_until("HA to see the unit online", lambda: ha.state(CONNECTED) == "on")
            time.sleep(2)
            watcher.stop()
            before = {name: watcher.triggered(name) for name in [*ids.values(), CONTROL]}
            ha.stop()
            restart = time.monotonic()
            ha.start()
            results.figures["ha_restart_s"] = round(time.monotonic() - restart, 1)
            watcher = Watcher(ha)
            watcher.start()
            wait_until("the visit entity back", lambda: ha.state(VISIT) not in (None, "unavailable"), 90)
            time.sleep(5)
            unit.send_signal(signal.SIGTERM)
            unit.wait(30)
        wait_until("HA to see the unit offline", lambda: ha.state(CONNECTED) == "off")

        step("unit: the resident again, after all that")
        run_to_end(configs.resident, logs)
        wait_until("HA to see the unit offline", lambda: ha.state(CONNECTED) == "off")
        time.sleep(1)
        total = {name: before[name] + watcher.triggered(name) for name in before}
        results.figures["triggered"] = total
        results.figures["events"] = [(e["seq"], e["type"], e["subject"]) for e in events.events]
        for automation_id, matches in EXPECTED.items():
            name = ids.get(automation_id, f"automation.<{automation_id} missing>")
            expected = sum(1 for e in events.events if matches(e, resident))
            results.expect(
                total.get(name, 0) == expected and expected > 0,
                f"{name} fired {total.get(name, 0)} times for {expected} matching events",
            )
        recognized = sum(1 for e in events.events if e["type"] == "recognized")
        # The recorder writes the logbook every few seconds: wait for it, then count.
        with contextlib.suppress(CheckError):
            wait_until(
                "the logbook entries", lambda: len(named_logbook_entries(ha, check_started)) >= recognized, 30
            )
        named = named_logbook_entries(ha, check_started)
        results.expect(
            len(named) == recognized and recognized > 0,
            f"the logbook names {README_NAME} {len(named)} times for {recognized} recognised visits",
        )
        names = (README_NAME, DEMO_NAME)  # the unit holds the second (enrolled with it), encrypted
        unit_said = [m for m in view.payloads if any(name.encode() in m for name in names)]
        results.expect(
            bool(view.payloads) and not unit_said,
            f"none of {len(view.payloads)} messages HA's identity can read names {names}: {unit_said[:1]}",
        )
        results.expect(
            total[CONTROL] > recognized,
            f"control (plain state trigger) fired {total[CONTROL]} times for {recognized} recognized visits: "
            "the check sees the misfires the README's examples avoid",
        )
        logs_text = "".join(
            p.read_text(errors="replace") for p in sorted(ha.config_dir.glob("home-assistant.log*"))
        )
        problems = ha_log_problems(logs_text)
        results.expect(
            not problems, f"Home Assistant's log: {len(problems)} errors/MQTT warnings {problems[:5]}"
        )
    except (CheckError, HomeAssistantExitedError) as error:
        results.expect(False, str(error))
    finally:
        if events is not None:
            events.close()
        if view is not None:
            view.close()
        if watcher is not None:
            watcher.stop()
        ha.stop()
        broker.stop()
        results.figures["wall_s"] = round(time.monotonic() - started, 1)
        if args.keep is None and not results.failures:
            shutil.rmtree(work, ignore_errors=True)
        else:
            step(f"work folder kept: {work}")
    return results


# Log lines that are not about this project: HA's camera helper looks for the system's libturbojpeg
# (snapshot speed; there is no camera here), and --skip-pip is what the check asks for.
IRRELEVANT = ("Error loading libturbojpeg", "Skipping pip installation")


def ha_log_problems(log: str) -> list[str]:
    """Errors, and warnings from the MQTT integration or about requirements; each message once."""
    found = []
    for line in log.splitlines():
        if any(text in line for text in IRRELEVANT):
            continue
        if " ERROR " in line or (
            " WARNING " in line and ("mqtt" in line.lower() or "requirement" in line.lower())
        ):
            found.append(line[:300])
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ha-python", type=Path, required=True, help="python of Home Assistant's venv")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = run(args)
    print(
        json.dumps({"ok": not results.failures, "failures": results.failures, **results.figures}, default=str)
    )
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
