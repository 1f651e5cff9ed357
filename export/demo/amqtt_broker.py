"""A private amqtt broker: the demo's fallback where mosquitto is missing and cannot be installed.

amqtt is pure Python (it comes with the venv, no system package) but speaks MQTT 3.1.1 only and
has no client-certificate authentication that the demo could rely on, so it runs a plain TCP
listener bound to 127.0.0.1 with the same users and passwords as the mosquitto broker (argon2
hashes in a password file; anonymous clients are refused) and an ACL that confines each device
to ``<prefix>/<device>/...`` as mosquitto's does. A denied publish is acknowledged and dropped:
MQTT 3.1.1 has no way to refuse one. Devices reach it by falling back from MQTT 5 to 3.1.1.
It also serves the tests of that fallback: a real broker that cannot speak MQTT 5.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from export.demo.broker import (
    CTL_PASS,
    CTL_USER,
    DEVICE_PASS,
    DEVICES,
    BrokerError,
    BrokerProcess,
    free_port,
)

logger = logging.getLogger(__name__)


def amqtt_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


def _password_file(path: Path, users: list[tuple[str, str]]) -> None:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    hasher = PasswordHash((Argon2Hasher(),))
    path.write_text("".join(f"{user}:{hasher.hash(secret)}\n" for user, secret in users))
    path.chmod(0o600)


class AmqttBroker(BrokerProcess):
    """One amqtt process on a free loopback port; the interface of :class:`Broker`, less TLS."""

    name = "amqtt"
    stop_signal = signal.SIGINT  # amqtt shuts down cleanly on SIGINT only
    start_timeout = 20.0

    mqtt5 = False
    tls_port = None
    pki = None

    def __init__(
        self, d: Path, devices: tuple[str, ...] = DEVICES, topic_prefix: str = "palm"
    ) -> None:
        if not amqtt_available():
            raise BrokerError(
                "neither mosquitto nor the amqtt package is installed: run "
                "`bash scripts/bootstrap.sh` (installs both where it may), or "
                "`sudo apt-get install mosquitto mosquitto-clients`"
            )
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        pw = self.dir / "passwd"
        _password_file(pw, [(CTL_USER, CTL_PASS)] + [(u, DEVICE_PASS) for u in devices])
        publish = {CTL_USER: ["#"]}
        subscribe = {CTL_USER: ["#"]}
        for dev in devices:
            publish[dev] = [f"{topic_prefix}/{dev}/#", f"homeassistant/event/{dev}/#"]
            subscribe[dev] = [f"{topic_prefix}/{dev}/cmd", "homeassistant/status"]
        conf = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(pw)},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                    "publish_acl": publish,
                    "acl": subscribe,
                },
            },
        }
        self.conf = self.dir / "amqtt.yaml"
        self.conf.write_text(yaml.safe_dump(conf, sort_keys=False))
        self.log = self.dir / "amqtt.log"
        self.proc: subprocess.Popen | None = None

    def describe(self) -> str:
        return (
            f"amqtt (pure-Python fallback, MQTT 3.1.1 only) on 127.0.0.1:{self.port}, plain TCP "
            f"on loopback with passwords, config {self.conf}"
        )

    def _launch(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.conf)]
        with open(self.log, "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def device_section(self, device: str, **over: Any) -> dict[str, Any]:
        """What the demo's device uses: the plain listener (there is no TLS one here)."""
        return self.mqtt_section(device, **over)
