"""A private mosquitto for the whole test session: password file, ACL, a plain and a TLS listener.

Certificates (a CA, a server cert with an IP SAN for 127.0.0.1, client certs) are generated with
``cryptography``. The ACL gives the controller user ``ctl`` everything and confines each device
user to ``palm/<username>/...``, the way a production broker should.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CTL_USER, CTL_PASS = "ctl", "ctl-secret"
DEVICE_PASS = "dev-secret"
DEVICES = tuple(f"dev{i}" for i in range(1, 15))

ACL = """\
user ctl
topic readwrite #

pattern write palm/%u/#
pattern read palm/%u/cmd
pattern read homeassistant/status
pattern write homeassistant/event/%u/#
"""


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


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool = False, san=None, usage=None):
    now = dt.datetime.now(dt.UTC)
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


class Broker:
    """One mosquitto process that tests may stop and start again (same ports, same sessions)."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.port = free_port()
        self.tls_port = free_port()
        self.pki = make_pki(d / "pki", (CTL_USER, *DEVICES))
        pw = d / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), CTL_USER, CTL_PASS], check=True)
        for dev in DEVICES:
            subprocess.run(["mosquitto_passwd", "-b", str(pw), dev, DEVICE_PASS], check=True)
        (d / "acl").write_text(ACL)
        (d / "data").mkdir()
        self.log = d / "mosquitto.log"
        conf = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {pw}",
            f"acl_file {d / 'acl'}",
            "persistence true",
            f"persistence_location {d / 'data'}/",
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
        self.conf = d / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
                    socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2),
                ):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def mqtt_section(self, device: str, **over) -> dict:
        """The ``mqtt:`` config section a device needs to reach this broker (plain listener)."""
        sec = {
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


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def running_broker(broker: Broker) -> Broker:
    """The session broker, restarted if an earlier test left it stopped."""
    if broker.proc is None or broker.proc.poll() is not None:
        broker.start()
    return broker


class Sub:
    """``mosquitto_sub`` as an independent subscriber; lines are (topic, retained, qos, payload)."""

    def __init__(self, broker: Broker, topic: str, *, session: str | None = None, v5: bool = True):
        self.broker = broker
        self.topic = topic
        self.session = session
        self.v5 = v5
        self.messages: list[tuple[str, bool, int, str]] = []
        self.markers_seen: set[str] = set()
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port),
            "-u", CTL_USER, "-P", CTL_PASS, "-q", "1", "-t", self.topic,
            "-F", "%t %r %q %p",
        ]  # fmt: skip
        if self.v5:
            cmd += ["-V", "mqttv5"]
        if self.session:
            cmd += ["-c", "-i", self.session]  # persistent session: queued while we are away
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, errors="replace", bufsize=1
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) < 4:
                continue  # a payload with a newline in it (the command fuzz): not ours to parse
            topic, retained, qos, payload = parts
            with self._cond:
                if payload.startswith("sync-marker-"):
                    self.markers_seen.add(payload)
                else:
                    self.messages.append((topic, retained == "1", int(qos), payload))
                self._cond.notify_all()

    def sync(self, timeout: float = 10) -> None:
        """Return once the subscription is live (a marker we publish comes back)."""
        marker = f"sync-marker-{uuid.uuid4().hex}"
        topic = self.topic.replace("#", "sync").replace("+", "sync")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.broker.port),
                 "-u", CTL_USER, "-P", CTL_PASS, "-t", topic, "-m", marker],
                check=True,
            )  # fmt: skip
            with self._cond:
                if self._cond.wait_for(lambda: marker in self.markers_seen, timeout=0.5):
                    return
        raise AssertionError(f"subscriber on {self.topic} never saw its marker")

    def wait(self, pred, count: int = 1, timeout: float = 10) -> list[tuple[str, bool, int, str]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [m for m in self.messages if pred(m)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0:
                    return hits
                self._cond.wait(left)

    def on(self, suffix: str) -> list[tuple[str, bool, int, str]]:
        with self._cond:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


@pytest.fixture
def subscribe(running_broker: Broker):
    subs: list[Sub] = []

    def make(topic: str, **kw) -> Sub:
        s = Sub(running_broker, topic, **kw)
        subs.append(s)
        s.sync()
        return s

    yield make
    for s in subs:
        s.stop()


# -- a small real bundle and replayable captures for the daemon tests ----------------------------

BITS = 32


def tiny_onnx(path: Path, seed: int) -> None:
    """A real ONNX hashing model: 8x8 average pooling, then a fixed random projection to K.

    Similar ROIs give similar codes (a locality-sensitive hash), which is all the daemon's
    tests need from a network; built with onnx.helper, so no training is involved.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((3 * 16 * 16, BITS)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["output"]),
        ],
        "tiny_hash",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", BITS])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bundle(root: Path) -> Path:
    import numpy as np

    from agent import codes
    from agent.bundle import FORMAT_VERSION, Manifest, Modality, ModelEntry
    from agent.preprocess import DEFAULT_SPEC
    from export.bundle_writer import file_entry, write_centroids, write_manifest

    root.mkdir(parents=True)
    models = []
    for i, modality in enumerate(("print", "vein")):
        name = f"{modality}.fp32.onnx"
        tiny_onnx(root / name, seed=i)
        e = file_entry(root, name)
        models.append(ModelEntry(modality, "onnx", "fp32", e.file, e.sha256, e.size))
    centroids = np.where(np.random.default_rng(5).random((4, BITS)) > 0.5, 1.0, -1.0)
    row = {"eer": 8.0, "0.01": 7.0, "0.001": 6.0, "0.0001": 4.0}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        bits=BITS,
        bit_order=codes.BIT_ORDER,
        input_size=128,
        modalities={m: Modality(DEFAULT_SPEC.to_dict(), ["grey"] * 3) for m in ("print", "vein")},
        models=models,
        centroids=write_centroids(root, centroids, [f"id{i}" for i in range(4)]),
        thresholds={m: dict(row) for m in ("print", "vein", "multi", "cross", "centroid")},
    )
    write_manifest(root, manifest)
    return root


def palm_roi(subject: int, capture: int):
    """A 128x128 grey ROI: a smooth texture per subject plus fresh sensor noise per capture."""
    import cv2
    import numpy as np

    base = np.random.default_rng(1000 + subject).integers(40, 215, (16, 16)).astype(np.float32)
    img = cv2.resize(base, (128, 128), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(capture * 7919 + subject).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def palm_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "bundle")
