"""A local TLS Mosquitto for `make run` and demos: the broker kit's LocalBroker plus what a unit and a
`device events tail` consumer need to talk to it.

    dev = start_dev_broker(Path("state/dev-broker"), unit_id="demo-unit")
    config = parse_config({..., "mqtt": dev.mqtt_section()})   # the unit publishes here
    subprocess.Popen(["device", "events", "tail", *dev.tail_args()])
    ...
    dev.stop()

Development only: the broker kit lives in deploy/broker (not part of the unit's package), so it is
imported from the source tree this package was installed from (an editable install).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import UserError
from device.events.signing import EventKey, registry_text

TAIL_IDENTITY = "tail"


class DevBrokerError(UserError):
    """No local broker can be started (broker kit or mosquitto missing)."""


def _local_broker_class() -> Any:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "deploy" / "broker" / "local.py").exists():
        raise DevBrokerError(
            "the broker kit (deploy/broker) is not next to this package: use a source checkout"
        )
    if str(repo) not in sys.path:
        sys.path.append(str(repo))
    return importlib.import_module("deploy.broker.local").LocalBroker


@dataclass
class DevBroker:
    broker: Any  # deploy.broker.local.LocalBroker
    unit_id: str

    @property
    def port(self) -> int:
        return int(self.broker.port)

    def mqtt_section(self) -> dict[str, Any]:
        """The unit config's [mqtt] section for this broker (TLS with the unit's own certificate)."""
        cert, key = self.broker.cert_for(self.unit_id)
        return {
            "enabled": True,
            "host": "localhost",
            "port": self.port,
            "topic_prefix": self.broker.prefix,
            "tls": {"ca_file": str(self.broker.ca_file), "cert_file": str(cert), "key_file": str(key)},
            "event_key_path": str(self.event_key_path),
        }

    @property
    def event_key_path(self) -> Path:
        return Path(self.broker.root) / "secrets" / f"{self.unit_id}-event-signing.key"

    def key_registry(self) -> Path:
        """The consumers' key registry for this unit (the fleet playbook's job in production)."""
        key = EventKey.load_or_create(self.event_key_path)
        path = Path(self.broker.root) / "unit-keys.json"
        path.write_text(registry_text({self.unit_id: key.public_text}), encoding="utf-8")
        return path

    def tail_args(self) -> list[str]:
        """Arguments after `device events tail` for a consumer of this unit's events."""
        cert, key = self.broker.cert_for(TAIL_IDENTITY)
        return [
            "--host", "localhost", "--port", str(self.port), "--ca", str(self.broker.ca_file),
            "--cert", str(cert), "--key", str(key), "--prefix", self.broker.prefix, "--unit", self.unit_id,
            "--keys", str(self.key_registry()),
        ]  # fmt: skip

    def stop(self) -> None:
        self.broker.stop()


def start_dev_broker(workdir: Path, unit_id: str = "demo-unit", *, port: int | None = None) -> DevBroker:
    """Starts Mosquitto on loopback with the fleet config; PKI and data are kept in ``workdir``."""
    local_broker = _local_broker_class()
    try:
        broker = local_broker(workdir, port=port)
        broker.start()
    except RuntimeError as error:
        raise DevBrokerError(str(error)) from error
    return DevBroker(broker, unit_id)
