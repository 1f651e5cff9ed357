"""A private mosquitto for the whole test session (export.demo.broker), subscribers, a tiny bundle.

The broker has a password file, an ACL and a plain and a TLS listener; the ACL gives the
controller user ``ctl`` everything and confines each device user to ``palm/<username>/...``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from export.demo.broker import (  # noqa: F401  (re-exported for the tests)
    CTL_PASS,
    CTL_USER,
    DEVICE_PASS,
    DEVICES,
    Broker,
    Pki,
    free_port,
    make_pki,
)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    # the demo's devices, and one each for the tests that need a device of their own
    b = Broker(tmp_path_factory.mktemp("mosquitto"), devices=tuple(f"dev{i}" for i in range(1, 46)))
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


def make_bundle(
    root: Path,
    modalities: tuple[str, ...] = ("print", "vein"),
    seed: int = 0,
    weights_sha256: str | None = None,
) -> Path:
    """An unsigned bundle of tiny models; ``modalities``: the ones it has models for (an
    export from a print-only data set has print alone); ``seed``: another seed is another
    network (other codes), and ``weights_sha256`` the digest its manifest records for it."""
    import numpy as np

    from agent import codes
    from agent.manifest import FORMAT_VERSION, Manifest, Modality, ModelEntry
    from agent.preprocess import DEFAULT_SPEC
    from export.bundle_writer import file_entry, write_centroids, write_manifest

    root.mkdir(parents=True)
    models = []
    for i, modality in enumerate(("print", "vein")):
        if modality not in modalities:
            continue
        name = f"{modality}.fp32.onnx"
        tiny_onnx(root / name, seed=2 * seed + i)
        e = file_entry(root, name)
        models.append(ModelEntry(modality, "onnx", "fp32", e.file, e.sha256, e.size))
    centroids = np.where(np.random.default_rng(5).random((4, BITS)) > 0.5, 1.0, -1.0)
    row = {"eer": 8.0, "0.01": 7.0, "0.001": 6.0, "0.0001": 4.0}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        bits=BITS,
        bit_order=codes.BIT_ORDER,
        input_size=128,
        modalities={m: Modality(DEFAULT_SPEC.to_dict(), ["grey"] * 3) for m in modalities},
        models=models,
        centroids=write_centroids(root, centroids, [f"id{i}" for i in range(4)]),
        thresholds={m: dict(row) for m in ("print", "vein", "multi", "cross", "centroid")},
        weights_sha256=weights_sha256,
    )
    write_manifest(root, manifest)
    return root


def watch_infer(backend) -> list[tuple[str, float, float]]:
    """Record each run of ``backend``'s model as it happens: (thread name, start, end), on
    ``time.perf_counter``; a list append is atomic, so a worker thread records too."""
    runs: list[tuple[str, float, float]] = []
    run = backend.infer

    def watched(x):
        t0 = time.perf_counter()
        out = run(x)
        runs.append((threading.current_thread().name, t0, time.perf_counter()))
        return out

    backend.infer = watched
    return runs


def onnx_threads(backend) -> int:
    """The intra-op threads onnxruntime runs ``backend``'s model on."""
    return backend.session.get_session_options().intra_op_num_threads


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


def use_kernel(mp: pytest.MonkeyPatch, kernel: str) -> None:
    """Search with ``kernel`` ("c" or "numpy"): the numpy paths, Python ints for small galleries
    included, are what an install without a C compiler runs, so tests force them this way."""
    from agent import gallery

    if kernel == "numpy":
        mp.setattr(gallery, "_hamming", None)
        mp.setattr(gallery, "INT_CROSSOVER", gallery.NUMPY_INT_CROSSOVER)


def unprivileged(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` without the right to read other people's files (root keeps its uid but
    loses CAP_DAC_OVERRIDE): what the service's dynamic user meets in /etc/palm-agent."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's file-access override")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", drop, "--inh-caps", "-all"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )


def on_main(daemon, call):
    """Runs ``call`` as the MQTT transport's thread sends a command: from another thread, while
    the daemon's loop runs its jobs here; returns its reply, or a refusal's message."""
    from agent.commands import CommandError

    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except CommandError as e:
            out.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    while t.is_alive():
        daemon._run_jobs(timeout=0.05)
    return out[0]
