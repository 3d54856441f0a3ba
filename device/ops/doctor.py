"""``device doctor``: everything `run` will need, checked before it is needed, one line per check.

Each check answers one question an installer has (is the file there and readable by the service user,
does the certificate fit this unit and this broker, does the broker answer, does the camera open, are the
model files the shipped ones, is the Coral used and why not, where does the gallery key come from) and,
when the answer is no, says how to fix it. Nothing is written: the broker connection is opened and closed
without publishing, the camera is opened and closed without keeping a frame.
"""

from __future__ import annotations

import datetime as dt
import grp
import os
import pwd
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from device.config import UnitConfig
from device.events.connect_errors import explain_connect_error, explain_refusal

SERVICE_USER = "entrance-camera"
BROKER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def render(self) -> str:
        mark = "✓" if self.ok else "✗"
        line = f"{mark} {self.name}: {self.detail}"
        return line if self.ok or not self.fix else f"{line}\n    fix: {self.fix}"


# --- files -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    """Who must be able to read the unit's files: the service user, or (None) whoever runs the check."""

    user: str | None

    @staticmethod
    def for_this_machine() -> Reader:
        """The unit's service user when it exists (an installed unit), else the current user."""
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return Reader(None)
        return Reader(SERVICE_USER)

    @property
    def label(self) -> str:
        return self.user or pwd.getpwuid(os.geteuid()).pw_name

    def can_read(self, path: Path) -> bool:
        if self.user is None:
            return os.access(path, os.R_OK)
        entry = pwd.getpwnam(self.user)
        groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem}
        return all(
            _mode_allows(p, entry.pw_uid, groups, os.R_OK if p == path else os.X_OK)
            for p in [*reversed(path.parents), path]
            if p.exists()
        )


def _mode_allows(path: Path, uid: int, gids: set[int], want: int) -> bool:
    """Classic permission bits (root reads anything); ACLs are not consulted."""
    if uid == 0:
        return True
    info = path.stat()
    bits = {
        os.R_OK: (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH),
        os.X_OK: (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH),
    }
    owner, group, other = bits[want]
    if info.st_uid == uid:
        return bool(info.st_mode & owner)
    if info.st_gid in gids:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def file_check(name: str, path: Path | None, reader: Reader, *, missing_fix: str) -> Check:
    if path is None:
        return Check(name, False, "not set in the config", missing_fix)
    if not path.exists():
        return Check(name, False, f"{path} does not exist", missing_fix)
    if not reader.can_read(path):
        return Check(
            name,
            False,
            f"{path} is not readable by {reader.label}",
            f"chown {reader.label} {path}  (or chgrp {reader.label} and chmod g+r)",
        )
    return Check(name, True, f"{path} (readable by {reader.label})")


def unit_files(config: UnitConfig, reader: Reader) -> Iterator[Check]:
    yield file_check(
        "models.dir",
        config.models.dir / "manifest.json",
        reader,
        missing_fix="set [models] dir to the folder holding manifest.json (the project's models/)",
    )
    if config.mqtt.enabled:
        tls = config.mqtt.tls
        for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            yield file_check(
                f"mqtt.tls.{key}",
                path,
                reader,
                missing_fix=f"copy the unit's file there or set mqtt.tls.{key} (deploy/broker/README.md)",
            )
        if config.mqtt.password_file is not None:
            yield file_check(
                "mqtt.password_file",
                config.mqtt.password_file,
                reader,
                missing_fix="write the file or unset it",
            )


# --- certificate -------------------------------------------------------------------------------------
def certificate_check(config: UnitConfig, now: dt.datetime | None = None) -> Check:
    """The unit's certificate: issued by the configured CA, valid now, named like unit.id, key matches."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from device.atomicio import InputFileError, read_capped
    from device.events.tls import MAX_TLS_FILE_BYTES

    tls = config.mqtt.tls
    name = "certificate"
    if tls.ca_file is None or tls.cert_file is None or tls.key_file is None:
        return Check(name, False, "mqtt.tls needs ca_file, cert_file and key_file", "set all three")
    try:
        ca = x509.load_pem_x509_certificate(read_capped(tls.ca_file, MAX_TLS_FILE_BYTES, "mqtt.tls.ca_file"))
        cert = x509.load_pem_x509_certificate(
            read_capped(tls.cert_file, MAX_TLS_FILE_BYTES, "mqtt.tls.cert_file")
        )
        key_pem = read_capped(tls.key_file, MAX_TLS_FILE_BYTES, "mqtt.tls.key_file")
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError, InputFileError) as error:
        return Check(name, False, f"cannot read the TLS files: {error}", "check the three mqtt.tls files")
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(common_names[0].value) if common_names else ""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as error:  # InvalidSignature has no common base
        return Check(
            name,
            False,
            f"{tls.cert_file} (CN {cn}) was not issued by the CA in {tls.ca_file} ({type(error).__name__})",
            "use the broker's CA file (ca.crt from the broker's PKI) and a certificate it issued",
        )
    moment = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        return Check(
            name,
            False,
            f"{tls.cert_file} is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now ({moment:%Y-%m-%d}; is the clock right?)",
            f"issue a new certificate: python3 -m deploy.broker.pki --dir PKI_DIR unit {config.unit.id}",
        )
    if cn != config.unit.id:
        return Check(
            name,
            False,
            f"{tls.cert_file} is issued to {cn!r} but unit.id is {config.unit.id!r}: the broker would refuse "
            "every event (0x87 Not authorized)",
            f"set [unit] id = {cn!r}, or issue a certificate for {config.unit.id!r}",
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return Check(
            name, False, f"{tls.key_file} is not the key of {tls.cert_file}", "copy the matching key"
        )
    return Check(
        name,
        True,
        f"CN {cn} = unit.id, issued by {tls.ca_file.name}, valid until {cert.not_valid_after_utc:%Y-%m-%d}",
    )


# --- broker ------------------------------------------------------------------------------------------
def broker_check(config: UnitConfig, timeout_s: float = BROKER_TIMEOUT_S) -> Check:
    """Connects over TLS with the unit's own certificate and disconnects, publishing nothing."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from device.events.mqtt_publisher import MqttSetupError, tls_context

    name = "broker"
    settings = config.mqtt
    where = f"{settings.host}:{settings.port}"
    try:
        context = tls_context(settings)
    except MqttSetupError as error:
        return Check(name, False, str(error), "fix the mqtt.tls files first")
    done = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        outcome["reason"] = str(reason)
        outcome["ok"] = "no" if getattr(reason, "is_failure", True) else "yes"
        done.set()

    def on_disconnect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        outcome.setdefault("reason", str(reason))
        outcome.setdefault("ok", "no")
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"entrance-{config.unit.id}-doctor",
        protocol=MQTTProtocolVersion.MQTTv5,
        reconnect_on_failure=False,
    )
    client.tls_set_context(context)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            while not done.is_set() and not deadline.is_set():
                rc = client.loop(timeout=0.2)
                if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                    outcome.setdefault("reason", mqtt.error_string(rc))
                    outcome.setdefault("ok", "no")
                    break
        finally:
            timer.cancel()
    except (OSError, ssl.SSLError) as error:
        detail, fix = explain_connect_error(error, config.mqtt)
        return Check(name, False, detail, fix)
    finally:
        client.disconnect()
        client.socket() and client.loop(timeout=0.1)
    if outcome.get("ok") == "yes":
        return Check(
            name, True, f"{where} accepted the unit's certificate over TLS (connected, disconnected)"
        )
    if "reason" not in outcome:
        return Check(
            name, False, f"no answer from {where} within {timeout_s:.0f} s", "check the broker and network"
        )
    detail, fix = explain_refusal(outcome["reason"], config.mqtt, config.unit.id)
    return Check(name, False, detail, fix)


# --- capture, models, accelerator, key ---------------------------------------------------------------
def capture_check(config: UnitConfig) -> Check:
    from device.vision.capture import open_source
    from device.vision.capture.source import CameraError

    name = "capture"
    capture = config.capture
    try:
        source = open_source(capture)
        source.open()
    except (CameraError, OSError) as error:
        return Check(
            name,
            False,
            f"{capture.backend} source {capture.source_label()} does not open: {error}",
            "check capture.backend and capture.source (is the camera plugged in, the file there?)",
        )
    source.close()
    return Check(name, True, f"{capture.backend} source {capture.source_label()} opens")


def models_check(config: UnitConfig) -> Check:
    from device.models.manifest import ModelFileError, load_manifest, model_entry, verify_file

    models = config.models
    try:
        manifest = load_manifest(models.dir)
        checked = []
        for name in unit_model_names(config):
            entry = model_entry(manifest, name, models.dir)
            for variant, model_file in entry.files.items():
                if model_file.sha256 is None:
                    continue
                verify_file(models.dir, name, variant, model_file)
                checked.append(f"{name} {variant}")
    except ModelFileError as error:
        return Check(
            "models", False, str(error), "reinstall the models folder: `device models verify` lists it"
        )
    return Check("models", True, f"sha256 ok: {', '.join(checked)}")


def unit_model_names(config: UnitConfig) -> tuple[str, ...]:
    """The models ``device run`` opens: detector and embedder, and PAD's texture CNNs and face mesh."""
    models = config.models
    pad = () if config.liveness.mode == "off" else (*models.pad_texture, models.landmarks)
    return (models.detector, models.embedder, *pad)


def cpu_files_check(config: UnitConfig) -> Check:
    """Which CPU file (float or int8) each model runs and why, as chosen at the unit's first start and
    kept in ``<state_dir>/cpu_variant.json``; informative (a model not timed yet is timed at start)."""
    from device.models.cpu_variant import ChoiceStore, choice_state_dir, cpu_files
    from device.models.manifest import load_manifest, model_entry

    name = "cpu files"
    if config.models.cpu_variant != "auto":
        return Check(name, True, f"models.cpu_variant = {config.models.cpu_variant} for every model")
    state_dir = choice_state_dir(config.unit.state_dir)
    if state_dir is None:
        return Check(name, True, "no unit state dir: each start times the float and int8 files again")
    store, manifest = ChoiceStore(state_dir), load_manifest(config.models.dir)
    said = []
    for model in unit_model_names(config):
        files = cpu_files(model_entry(manifest, model, config.models.dir))
        kept = store.get(model)
        if len(files) == 1:
            said.append(f"{model} {files[0]} (only CPU file)")
        elif kept is None:
            said.append(f"{model} not timed yet (at the next start)")
        else:
            said.append(f"{model} {kept.variant} ({kept.reason})")
    return Check(name, True, "; ".join(said))


def accelerator_check(config: UnitConfig) -> Check:
    from device.models.accelerator import EdgeTpuUnavailableError, probe_edgetpu
    from device.models.interpreter import load_edgetpu_delegate, load_interpreter
    from device.models.manifest import ModelFileError, load_manifest, model_entry

    models = config.models
    name = "accelerator"
    if models.accelerator == "cpu":
        return Check(name, True, "CPU (models.accelerator = cpu)")
    try:
        entry = model_entry(load_manifest(models.dir), models.detector, models.dir)
        backend = probe_edgetpu(models, models.detector, entry, load_edgetpu_delegate, load_interpreter)
    except ModelFileError as error:
        return Check(name, False, str(error), "fix the models first")
    except EdgeTpuUnavailableError as error:
        required = models.accelerator == "edgetpu"
        detail = f"CPU fallback: {error}"
        fix = (
            "plug in the Coral, install libedgetpu1-std and compile the models (make edgetpu-models); "
            "without compiled Edge TPU files the unit runs on the CPU"
        )
        return Check(name, not required, detail if required else f"{detail} (the unit runs on the CPU)", fix)
    return Check(name, True, f"Edge TPU ({backend.state})")


def key_check(config: UnitConfig) -> Check:
    from device.identity.masterkey import MasterKeyError, load_master_key

    path = config.gallery.master_key_path
    try:
        load_master_key(path)
    except MasterKeyError as error:
        return Check(
            "gallery key", False, str(error), "run `device init` for a new unit (it writes the key once)"
        )
    return Check("gallery key", True, f"key file {path} (mode 0600)")


def audit_check(config: UnitConfig) -> Check:
    """The audit log whole and ending where its head says (a cut or deleted log is said at start)."""
    from device.identity.audit import AuditError, AuditLog
    from device.identity.masterkey import MasterKeyError, load_master_key
    from device.layout import StateLayout

    layout = StateLayout.from_config(config)
    try:
        log = AuditLog.of_unit(layout, load_master_key(layout.master_key, config.gallery.key_source))
        problems = log.verify().problems
    except (MasterKeyError, AuditError) as error:
        problems = [str(error)]
    if problems:
        fix = "keep the log as evidence (cut, altered or put back); `device audit verify` names each entry"
        return Check("audit log", False, f"{len(problems)} problem(s): {problems[0]}", fix)
    return Check("audit log", True, f"{layout.audit_log} whole, ends at its head")


def run_checks(
    config: UnitConfig,
    *,
    config_label: str,
    reader: Reader | None = None,
    broker: Callable[[UnitConfig], Check] = broker_check,
) -> list[Check]:
    who = reader or Reader.for_this_machine()
    checks = [Check("config", True, config_label)]
    files = list(unit_files(config, who))
    checks += files
    checks.append(key_check(config))
    checks.append(audit_check(config))
    if config.mqtt.enabled:
        certificate = certificate_check(config)
        checks.append(certificate)
        checks.append(broker(config))
    else:
        checks.append(Check("mqtt", True, "disabled: decisions are printed, not published"))
    checks.append(capture_check(config))
    models = models_check(config)
    checks.append(models)
    if models.ok:
        checks.append(accelerator_check(config))
        checks.append(cpu_files_check(config))
    return checks
