"""A private mosquitto: generated PKI, password file, ACL, a plain and a TLS listener, free ports.

The demo, ``bench/e2e.py`` and the tests each start their own broker this way rather than using
whatever listens on 1883, so they never publish into a real installation and never depend on
its users or ACL. Certificates (a CA, a server certificate with an IP SAN for 127.0.0.1, client
certificates) come from ``cryptography``: TLS to an IP address needs that SAN. The ACL gives the
controller user everything and confines each device user to ``<prefix>/<username>/...``, the way
a production broker should.

Where mosquitto is missing (and ``scripts/bootstrap.sh`` could not install it), :func:`start_broker`
starts the pure-Python amqtt broker instead (``export.demo.amqtt_broker``: MQTT 3.1.1 only, plain
TCP on loopback with the same passwords); devices then fall back from MQTT 5 to 3.1.1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from export.demo.amqtt_broker import AmqttBroker

logger = logging.getLogger(__name__)

CTL_USER, CTL_PASS = "ctl", "ctl-secret"
DEVICE_PASS = "dev-secret"
DEVICES = tuple(f"dev{i}" for i in range(1, 15))

ACL = """\
user {ctl}
topic readwrite #

pattern write {prefix}/%u/#
pattern read {prefix}/%u/cmd
pattern read homeassistant/status
pattern write homeassistant/event/%u/#
"""


class BrokerError(RuntimeError):
    """mosquitto is missing or would not start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str, key, issuer_name, issuer_key, *, ca=False, san=None, usage=None, starts_in=0.0
):
    """``starts_in``: seconds from now to the start of its validity (a test's certificate that
    is not yet valid); 5 minutes ago by default, for clocks a little apart."""
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=starts_in)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def make_pki(d: Path, clients: tuple[str, ...]) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost, one client cert each."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "palm test CA")])
    ca = _cert("palm test CA", ca_key, ca_name, ca_key, ca=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, san, usage) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca_name, ca_key, san=san, usage=usage)
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(_key_pem(key))
        return d / f"{name}.crt", d / f"{name}.key"

    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server_cert, server_key = issue("server", san, [ExtendedKeyUsageOID.SERVER_AUTH])
    pki = Pki(d / "ca.crt", server_cert, server_key)
    for c in clients:
        pki.clients[c] = issue(c, None, [ExtendedKeyUsageOID.CLIENT_AUTH])
    return pki


def mosquitto_available() -> bool:
    try:
        mosquitto_binary()
    except BrokerError:
        return False
    return True


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if found is None or shutil.which("mosquitto_passwd") is None:
        raise BrokerError(
            "mosquitto is not installed: run `bash scripts/bootstrap.sh` as root or with sudo, "
            "or `sudo apt-get install mosquitto mosquitto-clients`"
        )
    return found


class BrokerProcess:
    """A broker process on loopback ports: started, awaited until it listens, stopped.

    Subclasses build the config and say how to launch the process (:meth:`_launch`), which
    ports must accept connections (:meth:`_ports`), and which signal stops it cleanly.
    """

    name = "broker"
    stop_signal = signal.SIGTERM
    start_timeout = 10.0
    port: int
    log: Path
    proc: subprocess.Popen | None

    def _launch(self) -> subprocess.Popen:
        raise NotImplementedError

    def _ports(self) -> tuple[int, ...]:
        return (self.port,)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start and return once every listener accepts connections."""
        timeout = self.start_timeout if timeout is None else timeout
        self.proc = self._launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise BrokerError(f"{self.name} exited with {self.proc.returncode}: {tail}")
            try:
                with contextlib.ExitStack() as stack:
                    for port in self._ports():
                        stack.enter_context(
                            socket.create_connection(("127.0.0.1", port), timeout=0.2)
                        )
                logger.info("%s started ports=%s", self.name, self._ports())
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"{self.name} did not start listening within {timeout:g}s; see {self.log}"
        )

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mqtt_section(self, device: str, **over: Any) -> dict[str, Any]:
        """The ``mqtt:`` config section a device needs to reach this broker (plain listener)."""
        sec: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": False,
            "user": device,
            "password": DEVICE_PASS,
            "stats_interval": 0.2,
            "keepalive": 5,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
        }
        sec.update(over)
        return sec


class Broker(BrokerProcess):
    """One mosquitto process that may be stopped and started again (same ports, same sessions)."""

    name = "mosquitto"

    mqtt5 = True

    def __init__(
        self,
        d: Path,
        devices: tuple[str, ...] = DEVICES,
        topic_prefix: str = "palm",
        tls_clients: bool = True,
    ) -> None:
        self.binary = mosquitto_binary()
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port()
        self.pki = make_pki(self.dir / "pki", (CTL_USER, *devices) if tls_clients else ())
        pw = self.dir / "passwd"
        pw.unlink(missing_ok=True)
        users = [(CTL_USER, CTL_PASS)] + [(u, DEVICE_PASS) for u in devices]
        for i, (user, secret) in enumerate(users):
            create = ["-c"] if i == 0 else []
            subprocess.run(["mosquitto_passwd", "-b", *create, str(pw), user, secret], check=True)
        (self.dir / "acl").write_text(ACL.format(ctl=CTL_USER, prefix=topic_prefix))
        (self.dir / "data").mkdir(exist_ok=True)
        self.log = self.dir / "mosquitto.log"
        conf = [
            "per_listener_settings false",
            "set_tcp_nodelay true",
            "allow_anonymous false",
            f"password_file {pw}",
            f"acl_file {self.dir / 'acl'}",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} 127.0.0.1",
            f"listener {self.tls_port} 127.0.0.1",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
        ]
        if os.geteuid() == 0:
            conf.insert(0, "user root")  # otherwise mosquitto drops to a user that cannot read tmp
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def describe(self) -> str:
        return (
            f"mosquitto on 127.0.0.1:{self.port} (TLS with client certificates on "
            f"{self.tls_port}), config {self.conf}"
        )

    def _launch(self) -> subprocess.Popen:
        return subprocess.Popen([self.binary, "-c", str(self.conf)])

    def _ports(self) -> tuple[int, ...]:
        return (self.port, self.tls_port)

    def device_section(self, device: str, **over: Any) -> dict[str, Any]:
        """What the demo's device uses: mutual TLS, as a deployed device would."""
        cert, key = self.pki.clients[device]
        tls = {
            "port": self.tls_port,
            "tls": True,
            "tls_ca_certs": str(self.pki.ca),
            "tls_client_cert": str(cert),
            "tls_client_key": str(key),
        }
        return self.mqtt_section(device, **{**tls, **over})


def start_broker(
    d: Path, devices: tuple[str, ...] = DEVICES, topic_prefix: str = "palm"
) -> Broker | AmqttBroker:
    """A started private broker: mosquitto where it is installed, else amqtt (MQTT 3.1.1).

    Both have ``port``, ``mqtt5``, ``log``, ``describe()``, ``device_section()`` and ``stop()``.
    Raises :class:`BrokerError` when neither can run.
    """
    broker: Broker | AmqttBroker
    if mosquitto_available():
        broker = Broker(d, devices=devices, topic_prefix=topic_prefix)
    else:
        from export.demo.amqtt_broker import AmqttBroker

        logger.warning("mosquitto is not installed; starting the pure-Python amqtt broker")
        broker = AmqttBroker(d, devices=devices, topic_prefix=topic_prefix)
    broker.start()
    return broker
