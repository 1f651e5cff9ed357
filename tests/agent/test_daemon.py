"""The daemon as systemd runs it: a separate process, a real bundle, replayed captures, mosquitto.

One process per scenario; every observation is made from outside (mosquitto_sub, a paho
controller, an AF_UNIX datagram socket standing in for systemd, the process's exit code and log).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import clock

from .conftest import CTL_PASS, CTL_USER, on_main, onnx_threads, palm_roi
from .test_fuzz_commands import is_valid, payloads

ROOT = Path(__file__).resolve().parents[2]


def write_replay(d: Path, subjects: list[int], start: int = 0) -> Path:
    """One capture per entry: a print and a vein ROI of that subject, as the replay source reads."""
    for m in ("print", "vein"):
        (d / m).mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(subjects):
        cv2.imwrite(str(d / "print" / f"{start + i:05d}.png"), palm_roi(s, start + i))
        cv2.imwrite(str(d / "vein" / f"{start + i:05d}.png"), palm_roi(s + 50, start + i))
    return d


class NoBroker:
    """The broker a command that never connects is configured with (enroll, a refused start)."""

    def mqtt_section(self, device: str) -> dict:
        return {"host": "broker.lan"}


def agent_config(tmp: Path, broker, device: str, bundle: Path, replay: Path, **sections) -> Path:
    doc = {
        "device": {"id": device, "name": f"test {device}"},
        "mqtt": broker.mqtt_section(device),
        "outbox": {"path": str(tmp / "outbox.sqlite"), "flush_timeout": 3},
        # two threads: the two models of a capture run at once, as by default on a device
        "bundle": {"path": str(bundle), "runtime": "onnx", "precision": "fp32", "threads": 2},
        "store": {"path": str(tmp / "templates.sqlite"), "key_path": str(tmp / "device.key")},
        "match": {"mode": "multi", "identify": True},
        "camera": {
            "source": "replay",
            "layout": "dual",
            "replay_path": str(replay / "print"),
            "vein_replay_path": str(replay / "vein"),
            "loop": True,
            "fps": 20,
        },
        "roi": {"already_roi": True},
        "trigger": {"kind": "presence", "cooldown": 0},
        "enroll": {"captures": 3, "max_spread": 10, "timeout": 10},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp / f"{device}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Agent:
    """``palm-agent run`` as a child process, its log in a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log = config.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
        self._log_f = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=self._log_f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[str]:
        return [
            ln.split("decision event=")[1].split()[0]
            for ln in self.text().splitlines()
            if "decision event=" in ln
        ]

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._log_f.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log_f.close()


def enroll_cli(config: Path, subject: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "enroll", subject, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_until(pred, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_config_error_names_the_key_and_nothing_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: eighty\n")
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("palm-agent: mqtt.port:"), out.stderr


def test_run_decisions_stats_notify_and_sigterm(running_broker, subscribe, palm_bundle, tmp_path):
    replay_enroll = write_replay(tmp_path / "enroll", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev9", palm_bundle, replay_enroll)
    result = enroll_cli(cfg, "alice")
    assert result["captures"] == {"print": 3, "vein": 3}

    replay = write_replay(tmp_path / "live", [0, 1] * 5, start=100)
    cfg = agent_config(tmp_path, running_broker, "dev9", palm_bundle, replay)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    sub = subscribe("palm/dev9/#")
    agent = Agent(cfg, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    try:
        first = notify.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=mode=multi 1:N"), first
        assert notify.recv(4096) == b"WATCHDOG=1"
        assert notify.recv(4096) == b"WATCHDOG=1"  # periodic, not once

        decisions = sub.wait(lambda m: m[0] == "palm/dev9/decision", count=6, timeout=20)
        assert len(decisions) >= 6
        assert all(m[2] == 1 and not m[1] for m in decisions)  # QoS 1, never retained
        docs = [json.loads(m[3]) for m in decisions]
        for d in docs:
            assert set(d) >= {
                "schema", "event_id", "timestamp", "device", "mode", "subject", "distances",
                "threshold", "decision", "quality", "model_hash", "latency_ms",
            }  # fmt: skip
            assert d["device"] == "dev9" and d["mode"] == "multi" and len(d["model_hash"]) == 64
            assert d["clock_synced"] is clock.synced()  # the kernel's NTP state, as read here
            assert set(d["distances"]) == {"print", "vein"}
            assert "code" not in json.dumps(d)  # codes and images never leave the device
        outcomes = {(d["decision"], d["subject"]) for d in docs}
        assert outcomes == {("granted", "alice"), ("unknown", None)}, outcomes

        stats = sub.wait(lambda m: m[0] == "palm/dev9/stats", count=2, timeout=5)
        s = json.loads(stats[-1][3])
        assert s["gallery_size"] == 1 and s["connected"] is True and s["frames"] > 0
        assert {"uptime_s", "fps", "latency_ms", "outbox_depth", "camera", "decisions"} <= set(s)
        assert {"capture", "roi", "quality", "convert", "infer", "match"} == set(s["latency_ms"])
        assert sub.on("palm/dev9/availability")[0][3] == "online"

        agent.proc.send_signal(signal.SIGHUP)  # systemctl reload: the bundle is loaded again
        assert wait_until(lambda: "bundle reloaded" in agent.text(), timeout=10)
        assert agent.terminate() == 0
        rest = b""
        notify.settimeout(2)
        while b"STOPPING=1" not in rest:
            rest += notify.recv(4096) + b"\n"
        assert sub.wait(lambda m: m[0] == "palm/dev9/availability" and m[3] == "stopped")
        log = agent.text()
        assert "camera closed" in log and "daemon stopped" in log
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0  # flushed
        published = {json.loads(m[3])["event_id"] for m in sub.on("palm/dev9/decision")}
        assert set(agent.events()) <= published
    finally:
        agent.kill()
        notify.close()


def test_last_will_on_sigkill(running_broker, subscribe, palm_bundle, tmp_path):
    replay = write_replay(tmp_path / "r", [0, 1])
    cfg = agent_config(tmp_path, running_broker, "dev10", palm_bundle, replay)
    sub = subscribe("palm/dev10/availability")
    agent = Agent(cfg)
    try:
        assert sub.wait(lambda m: m[3] == "online", timeout=20), agent.text()
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(timeout=5)
        assert sub.wait(lambda m: m[3] == "offline", timeout=10)
        assert [m[3] for m in sub.messages] == ["online", "offline"]
    finally:
        agent.kill()


def test_broker_outage_and_restart_lose_nothing(running_broker, subscribe, palm_bundle, tmp_path):
    replay = write_replay(tmp_path / "r", [0, 1, 2, 3] * 5)
    cfg = agent_config(
        tmp_path, running_broker, "dev11", palm_bundle, replay, camera={"loop": False, "fps": 8}
    )
    sub = subscribe("palm/dev11/decision", session="ctl-dev11")

    def pending() -> int:
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            return db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    first = Agent(cfg)
    second = None
    try:
        assert sub.wait(lambda m: True, count=3, timeout=20), first.text()
        running_broker.stop()  # mid-stream
        time.sleep(0.8)  # decisions pile up in the outbox
        assert first.terminate() == 0  # cannot flush: they stay on disk
        assert pending() > 0
        second = Agent(cfg)  # restarted during the outage
        assert wait_until(lambda: len(second.events()) >= 3, timeout=20), second.text()
        running_broker.start()
        sub.stop()
        sub.start()  # the persistent session queued what arrived meanwhile
        # the replay has 20 frames: wait for all of them to be decided and delivered
        assert wait_until(lambda: len(second.events()) == 20 and pending() == 0, timeout=30)
        assert second.terminate() == 0
        expected = first.events() + second.events()
        assert len(expected) >= 10

        def ids() -> list[str]:
            return [json.loads(m[3])["event_id"] for m in sub.on("palm/dev11/decision")]

        assert wait_until(lambda: set(ids()) >= set(expected), timeout=20), "decisions were lost"
        got = ids()
        firsts = [e for i, e in enumerate(got) if e not in got[:i]]
        assert [e for e in firsts if e in expected] == expected  # in order
    finally:
        first.kill()
        if second is not None:
            second.kill()
        if running_broker.proc is None:
            running_broker.start()


class Controller:
    """A paho MQTT 5 client sending commands with a response topic and correlation data."""

    def __init__(self, broker, device: str) -> None:
        self.device = device
        self.replies: dict[bytes, dict] = {}
        self._cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(CTL_USER, CTL_PASS)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(f"palm/{device}/reply/ctl", qos=1)
        self.c.loop_start()
        time.sleep(0.2)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.replies[msg.properties.CorrelationData] = json.loads(msg.payload)
            self._cond.notify_all()

    def send(self, payload: bytes) -> bytes:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"palm/{self.device}/reply/ctl"
        corr = uuid.uuid4().bytes
        props.CorrelationData = corr
        self.c.publish(f"palm/{self.device}/cmd", payload, qos=1, properties=props)
        return corr

    def wait(self, corrs: list[bytes], timeout: float = 30) -> list[dict]:
        with self._cond:
            ok = self._cond.wait_for(lambda: all(c in self.replies for c in corrs), timeout)
            assert ok, f"{sum(c in self.replies for c in corrs)} of {len(corrs)} replies"
            return [self.replies[c] for c in corrs]

    def call(self, cmd: str, **args) -> dict:
        return self.wait([self.send(json.dumps({"cmd": cmd, "args": args}).encode())])[0]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_commands_and_fuzz_over_mqtt(running_broker, subscribe, palm_bundle, tmp_path):
    replay = write_replay(tmp_path / "r", [3] * 4)
    cfg = agent_config(
        tmp_path, running_broker, "dev12", palm_bundle, replay, trigger={"kind": "command"}
    )
    sub = subscribe("palm/dev12/#")
    agent = Agent(cfg)
    ctl = Controller(running_broker, "dev12")
    try:
        assert sub.wait(lambda m: m[0].endswith("availability") and m[3] == "online", timeout=20)
        assert ctl.call("list")["result"] == {"subjects": []}
        r = ctl.call("capture")
        assert r["ok"] and r["result"]["decision"] == "unknown"  # nobody enrolled yet
        r = ctl.call("enroll", subject="carol", captures=3)
        assert r["ok"], r
        assert r["result"]["captures"] == {"print": 3, "vein": 3}
        assert ctl.call("list")["result"] == {"subjects": ["carol"]}
        r = ctl.call("mode", mode="print", identify=False, subject="carol")
        assert r["result"] == {"mode": "print", "identify": False, "subject": "carol"}
        r = ctl.call("capture")
        assert r["result"]["decision"] == "granted" and r["result"]["subject"] == "carol"
        event = r["result"]["event_id"]
        got = sub.wait(lambda m: m[0].endswith("/decision") and event in m[3], timeout=10)
        doc = json.loads(got[0][3])
        assert doc["mode"] == "print" and doc["claimed"] == "carol"
        assert ctl.call("rekey")["ok"]
        r = ctl.call("capture")  # same decision under the new key: renewable templates
        assert r["result"]["decision"] == "granted"
        assert len(ctl.call("reload")["result"]["model_hash"]) == 64
        assert ctl.call("revoke", subject="carol")["result"] == {"revoked": "carol"}
        r = ctl.call("capture")
        assert r["result"]["decision"] == "denied"
        r = ctl.call("revoke", subject="carol")
        assert not r["ok"] and r["error"]["code"] == "failed"

        bad = [p for p in payloads(seed=11, n=1500) if not is_valid(p)]
        replies = []
        for i in range(0, len(bad), 250):  # batches stay within mosquitto's per-client queue
            replies += ctl.wait([ctl.send(p) for p in bad[i : i + 250]], timeout=60)
        assert len(replies) == len(bad) > 1000
        assert all(not r["ok"] and r["error"]["code"] != "internal" for r in replies)
        assert agent.proc.poll() is None  # still running
        assert ctl.call("list")["ok"]
        assert agent.terminate() == 0
    finally:
        ctl.close()
        agent.kill()


def test_a_palm_enrolled_again_over_mqtt_is_a_duplicate_unless_allowed(
    running_broker, palm_bundle, tmp_path
):
    """The same palm under a second label: refused with its own error code, naming the first,
    and nothing stored; sent again with allow_duplicate it is enrolled, and the log warns."""
    replay = write_replay(tmp_path / "r", [3] * 4)
    cfg = agent_config(
        tmp_path, running_broker, "dev32", palm_bundle, replay, trigger={"kind": "command"}
    )
    agent = Agent(cfg)
    ctl = Controller(running_broker, "dev32")
    try:
        assert wait_until(lambda: "daemon running" in agent.text(), timeout=30), agent.text()
        assert ctl.call("enroll", subject="carol", captures=3)["ok"]
        r = ctl.call("enroll", subject="carol2", captures=3)
        assert not r["ok"] and r["error"]["code"] == "duplicate", r
        said = r["error"]["message"]
        assert "'carol2' matches enrolled 'carol'" in said and "threshold 6" in said, said
        assert "allow_duplicate" in said, said
        assert ctl.call("list")["result"] == {"subjects": ["carol"]}
        r = ctl.call("enroll", subject="carol2", captures=3, allow_duplicate=True)
        assert r["ok"] and r["result"]["subject"] == "carol2", r
        assert ctl.call("list")["result"] == {"subjects": ["carol", "carol2"]}
        assert "WARNING agent.enroll: enroll duplicate_allowed subject=carol2 matches=carol" in (
            agent.text()
        )
        assert agent.terminate() == 0
    finally:
        ctl.close()
        agent.kill()


def run_beside(daemon, operator: Callable[[], None]) -> None:
    """The daemon's loop on this (the main) thread, as ``palm-agent run`` has it, while
    ``operator`` acts from another thread and then stops it; signal handlers put back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def act() -> None:
        try:
            operator()
        finally:
            daemon.stop()

    t = threading.Thread(target=act)
    t.start()
    try:
        assert daemon.run() == 0
    finally:
        t.join(timeout=30)
        for s, h in saved.items():
            signal.signal(s, h)


def test_a_reload_signal_takes_no_lock_the_loop_may_hold(
    running_broker, subscribe, palm_bundle, tmp_path
):
    """SIGHUP lands on the main thread between two of its steps, perhaps while it holds the job
    queue's lock; the handler must not wait for it. The loop then reloads the bundle."""
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev22", palm_bundle, write_replay(tmp_path / "r", [2]),
        trigger={"kind": "command"},
    )  # fmt: skip
    daemon = build(cfg)
    returned = threading.Event()

    def handler_inside_the_queue_lock() -> None:
        with daemon._jobs.queue.mutex:
            daemon.request_reload(signal.SIGHUP, None)
        returned.set()

    threading.Thread(target=handler_inside_the_queue_lock, daemon=True).start()
    assert returned.wait(2), "the handler waited for the job queue's lock"
    engine = daemon.engine
    run_beside(daemon, lambda: wait_until(lambda: daemon.engine is not engine, timeout=10))
    assert daemon.engine is not engine  # loaded again


def test_a_capture_asked_during_the_cooldown_waits_it_out(
    running_broker, subscribe, palm_bundle, tmp_path
):
    """trigger.cooldown is the time after a decision before the next capture: a capture
    command right after a decision is taken once it has passed, not refused."""
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev23", palm_bundle, write_replay(tmp_path / "r", [2]),
        trigger={"kind": "command", "cooldown": 0.5},
    )  # fmt: skip
    daemon = build(cfg)
    results: list[tuple[float, dict]] = []

    def operator() -> None:
        for _ in range(2):
            reply = daemon.capture()
            results.append((time.monotonic(), reply))

    run_beside(daemon, operator)
    (t1, first), (t2, second) = results
    assert first["decision"] == second["decision"] == "unknown", results  # nobody enrolled
    assert second["event_id"] != first["event_id"]
    assert t2 - t1 >= 0.5, results


def test_a_mode_command_the_camera_cannot_feed_is_refused(
    running_broker, subscribe, palm_bundle, tmp_path
):
    from agent.commands import CommandError
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev24", palm_bundle, write_replay(tmp_path / "r", [2]),
        camera={"layout": "print"}, match={"mode": "print"}, trigger={"kind": "command"},
    )  # fmt: skip
    daemon = build(cfg)
    said: dict[str, object] = {}

    def operator() -> None:
        for mode in ("vein", "multi", "cross"):
            try:
                said[mode] = daemon.set_mode(mode, None, None)["mode"]
            except CommandError as e:
                said[mode] = str(e)

    run_beside(daemon, operator)
    assert (
        said["vein"]
        == "mode vein needs vein frames, which this camera does not give (it gives print)"
    )
    assert "needs vein frames" in str(said["multi"]) and said["cross"] == "cross"
    assert daemon.settings.mode == "cross"


def test_gpio_button_trigger_and_outcome_leds(running_broker, subscribe, palm_bundle, tmp_path):
    """In-process with gpiozero's MockFactory: a button press is one capture, its LED lights."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.run_cli import build

    Device.pin_factory = MockFactory()
    replay = write_replay(tmp_path / "r", [2])
    cfg = agent_config(
        tmp_path, running_broker, "dev13", palm_bundle, replay,
        trigger={"kind": "button", "button_pin": 22},
        leds={"granted_pin": 5, "denied_pin": 6},
    )  # fmt: skip
    sub = subscribe("palm/dev13/#")
    daemon = build(cfg)
    seen: dict[str, object] = {}

    def operator() -> None:
        assert sub.wait(lambda m: m[3] == "online", timeout=20)
        time.sleep(0.5)
        seen["before"] = len(sub.on("/decision"))  # no presence trigger: nothing yet
        button = Device.pin_factory.pin(22)
        button.drive_low()  # pressed (pull-up)
        time.sleep(0.05)
        button.drive_high()
        got = sub.wait(lambda m: m[0].endswith("/decision"), timeout=10)
        seen["doc"] = json.loads(got[0][3]) if got else None
        seen["denied_led"] = wait_until(lambda: Device.pin_factory.pin(6).state, 3)
        seen["granted_led"] = Device.pin_factory.pin(5).state

    try:
        run_beside(daemon, operator)
    finally:
        Device.pin_factory.close()
        Device.pin_factory = None
    assert seen["before"] == 0
    assert seen["doc"]["decision"] == "unknown"  # nobody enrolled
    assert seen["denied_led"] and not seen["granted_led"]


def test_a_bouncing_button_press_is_one_capture(running_broker, subscribe, palm_bundle, tmp_path):
    """A mechanical button's contacts close and open several times within a few ms of a press:
    each edge was a press, and each press a capture. trigger.debounce reaches gpiozero's
    bounce_time and the daemon's own filter (gpiozero's mock pins, as some real ones, ignore
    bounce_time)."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.run_cli import build

    Device.pin_factory = MockFactory()
    replay = write_replay(tmp_path / "r", [2])
    cfg = agent_config(
        tmp_path, running_broker, "dev15", palm_bundle, replay,
        trigger={"kind": "button", "button_pin": 22, "debounce": 0.2},
    )  # fmt: skip
    sub = subscribe("palm/dev15/#")
    daemon = build(cfg)
    seen: dict[str, object] = {}

    def operator() -> None:
        assert sub.wait(lambda m: m[3] == "online", timeout=20)
        button = Device.pin_factory.pin(22)
        seen["bounce_time"] = button.bounce
        for _ in range(4):  # one press: its contacts bounce four times within 8 ms
            button.drive_low()
            time.sleep(0.001)
            button.drive_high()
            time.sleep(0.001)
        assert sub.wait(lambda m: m[0].endswith("/decision"), timeout=10)
        time.sleep(1.5)  # time for any further capture (cooldown 0) to be decided
        seen["decisions"] = len(sub.on("/decision"))

    try:
        run_beside(daemon, operator)
    finally:
        Device.pin_factory.close()
        Device.pin_factory = None
    assert seen["bounce_time"] == 0.2
    assert seen["decisions"] == 1, seen


def damage_file(path: Path) -> None:
    """Garbage over a file in place, as a failing card returns it (the same inode: the running
    daemon's descriptors and its shared-memory map see it)."""
    size = max(path.stat().st_size, 4096)
    with open(path, "r+b") as f:
        f.write(os.urandom(size))


@pytest.mark.parametrize("found_by", ["capture", "command"])
def test_a_store_damaged_under_the_running_daemon_stops_it_with_code_2(
    running_broker, subscribe, palm_bundle, tmp_path, found_by
):
    """Every capture and every command that read a store damaged under the running daemon
    ended in a traceback, for as long as it ran. It stops at the first: one ERROR line that
    says what to do, a store_damaged event, exit code 2 (systemd and the operator see it)."""
    replay = write_replay(tmp_path / "r", [2] * 4)
    kind = "presence" if found_by == "capture" else "command"
    cfg = agent_config(tmp_path, running_broker, "dev18", palm_bundle, replay,
                       trigger={"kind": kind})  # fmt: skip
    enroll_cli(cfg, "alice")
    sub = subscribe("palm/dev18/#")
    agent = Agent(cfg)
    ctl = None
    try:
        assert sub.wait(lambda m: m[3] == "online", timeout=20), agent.text()
        if found_by == "capture":
            assert sub.wait(lambda m: m[0].endswith("/decision"), timeout=20), agent.text()
        else:
            ctl = Controller(running_broker, "dev18")
            assert ctl.call("list")["result"] == {"subjects": ["alice"]}
        store = tmp_path / "templates.sqlite"
        for part in (store, store.with_name(store.name + "-shm")):
            damage_file(part)
        if ctl is not None:
            reply = ctl.call("list")
            assert not reply["ok"] and "template store is damaged" in reply["error"]["message"]
        rc = agent.proc.wait(timeout=20)
    finally:
        agent.kill()
        if ctl is not None:
            ctl.close()
    text = agent.text()
    assert rc == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if "ERROR" in ln]
    assert len(errors) == 1, errors
    assert f"store damaged, stopping: {store}: file is not a database — restore" in errors[0]
    assert "enroll everyone again (palm-agent enroll SUBJECT" in errors[0], errors
    events = [json.loads(m[3]) for m in sub.on("/error")]
    assert [e["event"] for e in events] == ["store_damaged"], events
    assert events[0]["path"] == str(store) and events[0]["error"] == "file is not a database"


def test_start_reads_the_bundle_once_and_a_reload_checks_its_own(
    running_broker, palm_bundle, tmp_path, monkeypatch
):
    """The template store's code length and the first engine come from one read of the bundle:
    each model in use and the centroids are hashed once at start, and once more per reload."""
    from collections import Counter

    from agent import bundle as bundle_mod
    from agent.run_cli import build

    hashed: Counter[str] = Counter()
    real = bundle_mod.sha256_file

    def counting(path: Path) -> str:
        hashed[Path(path).name] += 1
        return real(path)

    monkeypatch.setattr(bundle_mod, "sha256_file", counting)
    replay = write_replay(tmp_path / "r", [2])
    cfg = agent_config(tmp_path, running_broker, "dev14", palm_bundle, replay)
    daemon = build(cfg, with_reporter=False)
    try:
        assert hashed and set(hashed.values()) == {1}, hashed
        assert daemon._reload()["model_hash"] == daemon.engine.model_hash
        assert set(hashed.values()) == {2}, hashed
    finally:
        daemon.close()


def test_the_daemon_runs_opencv_on_its_own_thread(running_broker, palm_bundle, tmp_path):
    """OpenCV's worker threads spin after each call: 1.2-1.4 ms of a second core per capture
    that the inference threads and the MQTT client need."""
    from agent.run_cli import build

    cfg = agent_config(tmp_path, running_broker, "dev14", palm_bundle, write_replay(tmp_path, [2]))
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        daemon = build(cfg, with_reporter=False)
        assert cv2.getNumThreads() == 1
        daemon.close()
    finally:
        cv2.setNumThreads(before)


def test_latency_runs_from_the_frame_not_from_the_wait_for_it(
    running_broker, palm_bundle, tmp_path
):
    """A capture command waits for the camera's next frame (4 frames/s here): the decision's
    latency_ms starts at that frame, not at the command."""
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev15", palm_bundle, write_replay(tmp_path / "r", [2]),
        camera={"fps": 4}, trigger={"kind": "command"},
    )  # fmt: skip
    daemon = build(cfg)
    docs: list[dict] = []
    daemon.on_decision.append(docs.append)
    waited: list[float] = []

    def operator() -> None:
        for _ in range(3):
            t0 = time.monotonic()
            daemon.capture()
            waited.append((time.monotonic() - t0) * 1e3)

    run_beside(daemon, operator)
    assert len(docs) == 3
    # the second and third command each waited about 250 ms for their frame
    assert min(waited[1:]) > 150, waited
    assert max(d["latency_ms"] for d in docs) < 100, ([d["latency_ms"] for d in docs], waited)


def test_changing_between_one_and_two_models_per_capture_reloads_with_their_threads(
    running_broker, palm_bundle, tmp_path
):
    """multi: each model on half of bundle.threads, run at once; a one-model mode (print) gives
    its model all of them, and back again. A change within two-model modes, or between the
    one-model modes, keeps the models."""
    from agent.run_cli import build

    cfg = agent_config(tmp_path, running_broker, "dev15", palm_bundle, write_replay(tmp_path, [2]))
    daemon = build(cfg, with_reporter=False)

    def set_mode(mode: str) -> dict:
        out: list = []
        t = threading.Thread(target=lambda: out.append(daemon.set_mode(mode, None, None)))
        t.start()
        while t.is_alive():
            daemon._run_jobs(timeout=0.05)
        return out[0]

    def plan() -> tuple:
        threads = {onnx_threads(b) for b in daemon.engine.backends.values()}
        return daemon.engine.per_capture, threads, daemon.engine.runner.concurrent

    try:
        assert plan() == (("print", "vein"), {1}, True)
        first = daemon.engine
        assert set_mode("cross")["mode"] == "cross" and daemon.engine is first
        assert set_mode("print")["mode"] == "print"
        assert plan() == (("print",), {2}, False) and daemon.engine is not first
        alone = daemon.engine  # vein alone wants the same threads: no reload
        assert set_mode("vein")["mode"] == "vein" and daemon.engine is alone
        assert set_mode("multi")["mode"] == "multi"
        assert plan() == (("print", "vein"), {1}, True)
    finally:
        daemon.close()


def test_a_command_the_busy_loop_does_not_take_up_in_time_is_withdrawn(
    running_broker, palm_bundle, tmp_path
):
    """A caller told that its command failed must not see it happen later, when the loop
    comes back from whatever held it."""
    from agent.commands import CommandError
    from agent.run_cli import build

    cfg = agent_config(tmp_path, running_broker, "dev16", palm_bundle, write_replay(tmp_path, [2]))
    daemon = build(cfg, with_reporter=False)
    daemon.command_wait_s = 0.2
    try:
        with pytest.raises(CommandError, match="nothing was done"):
            daemon.set_mode("print", None, None)  # the loop is not running: nobody takes it up
        daemon._run_jobs(timeout=0.05)  # the loop is back
        assert daemon.settings.mode == "multi"
    finally:
        daemon.close()


def test_waiting_out_a_long_cooldown_keeps_the_watchdog_fed(running_broker, palm_bundle, tmp_path):
    """A button press or a command waits out trigger.cooldown on the main loop; a cooldown
    longer than half of WatchdogSec= got the service killed as hung."""
    from agent.notify import Notifier
    from agent.run_cli import build

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    cfg = agent_config(tmp_path, running_broker, "dev17", palm_bundle, write_replay(tmp_path, [2]))
    daemon = build(cfg, with_reporter=False)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "30000000"}
    daemon.notifier = Notifier(env)
    try:
        daemon._next_frame = time.monotonic() + 2.5  # a decision's cooldown has begun
        daemon._grab(explicit=True)
        pings = []
        while True:
            try:
                pings.append(sock.recv(64))
            except TimeoutError:
                break
        assert pings.count(b"WATCHDOG=1") >= 2, pings
    finally:
        daemon.close()
        sock.close()


def write_dark_replay(d: Path) -> Path:
    """Captures with nobody in front of the reader: every frame fails the quality gate."""
    for m in ("print", "vein"):
        (d / m).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / m / "00000.png"), np.zeros((128, 128), np.uint8))
    return d


def test_sigterm_during_an_enrollment_stops_at_once_and_answers_it(
    running_broker, palm_bundle, tmp_path
):
    """An enrollment with nobody at the reader runs until enroll.timeout (30 s by default);
    SIGTERM meanwhile waited for it, past systemd's TimeoutStopSec= (20 s), which then killed
    the service. It now ends the enrollment, whose sender is told why, and the daemon stops."""
    cfg = agent_config(
        tmp_path, running_broker, "dev31", palm_bundle, write_dark_replay(tmp_path / "r"),
        trigger={"kind": "command"}, enroll={"timeout": 30},
    )  # fmt: skip
    agent = Agent(cfg)
    ctl = Controller(running_broker, "dev31")
    try:
        assert wait_until(lambda: "daemon running" in agent.text(), timeout=30), agent.text()
        corr = ctl.send(json.dumps({"cmd": "enroll", "args": {"subject": "dave"}}).encode())
        time.sleep(1.5)  # the enrollment is looking at the empty reader
        t0 = time.monotonic()
        assert agent.terminate(timeout=15) == 0
        assert time.monotonic() - t0 < 5, agent.text()
        (reply,) = ctl.wait([corr], timeout=5)
        assert not reply["ok"] and reply["error"]["code"] == "failed", reply
        assert "the daemon is stopping" in reply["error"]["message"], reply
    finally:
        ctl.close()
        agent.kill()


def test_a_stop_ends_the_wait_for_a_cooldown(running_broker, palm_bundle, tmp_path):
    """A capture command or an enrollment waits out trigger.cooldown on the main loop; a
    SIGTERM meanwhile waited for the rest of it."""
    from agent.run_cli import build

    cfg = agent_config(tmp_path, running_broker, "dev21", palm_bundle, write_replay(tmp_path, [2]))
    daemon = build(cfg, with_reporter=False)
    try:
        daemon._next_frame = time.monotonic() + 30  # a decision's cooldown has begun
        threading.Timer(0.3, daemon.stop).start()
        t0 = time.monotonic()
        daemon._grab(explicit=True)
        assert time.monotonic() - t0 < 3
    finally:
        daemon.close()


def test_a_bundle_without_the_models_a_mode_needs_is_refused(running_broker, tmp_path):
    """A bundle exported from a print-only data set has no vein model. In a mode that needs
    vein codes it was taken at start, by a reload and by the mode command, and then every
    capture was dropped (answered 'error' to a capture command) without a word of why."""
    from agent.run_cli import build

    from .conftest import make_bundle

    both = make_bundle(tmp_path / "both")
    print_only = make_bundle(tmp_path / "print-only", modalities=("print",))
    replay = write_replay(tmp_path / "r", [2])
    cfg = agent_config(tmp_path, running_broker, "dev21", print_only, replay)
    with pytest.raises(ValueError, match="mode multi needs vein models, which the bundle does not"):
        build(cfg, with_reporter=False)  # palm-agent run: one line, exit 2

    live = tmp_path / "live"
    live.symlink_to(both)
    cfg = agent_config(tmp_path, running_broker, "dev21", live, replay)
    daemon = build(cfg, with_reporter=False)

    try:
        engine = daemon.engine
        live.unlink()
        live.symlink_to(print_only)  # the bundle is replaced, then: systemctl reload
        said = on_main(daemon, daemon.reload)
        assert said == (
            "reload failed, keeping the current bundle: mode multi needs vein models, which "
            "the bundle does not have (it has print)"
        ), said
        assert daemon.engine is engine and daemon.settings.mode == "multi"
        assert on_main(daemon, lambda: daemon.set_mode("print", None, None))["mode"] == "print"
        assert daemon.engine.modalities == ("print",)  # print alone: loaded again
        said = on_main(daemon, lambda: daemon.set_mode("vein", None, None))
        assert said == "mode vein needs vein models, which the bundle does not have (it has print)"
        said = on_main(daemon, lambda: daemon.set_mode("multi", None, None))
        assert said == "mode multi needs vein models, which the bundle does not have (it has print)"
        assert daemon.settings.mode == "print"
        assert on_main(daemon, lambda: daemon.set_mode("cross", None, None))["mode"] == "cross"
    finally:
        daemon.close()


def test_a_command_that_comes_while_the_daemon_stops_is_answered(
    running_broker, palm_bundle, tmp_path
):
    """Between the loop's end and the MQTT client's (the camera closing, the outbox flushing)
    commands still arrive; one was queued for a loop that had ended, its sender waited 30 s,
    and the client was gone by then: no reply ever came."""
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev22", palm_bundle, write_replay(tmp_path / "r", [2]),
        trigger={"kind": "command"},
    )  # fmt: skip
    daemon = build(cfg)
    ctl = Controller(running_broker, "dev22")
    sent: list[bytes] = []
    close = daemon.source.close

    def slow_close() -> None:  # a camera that takes its time to close (picamera2: ~1 s)
        sent.append(ctl.send(json.dumps({"cmd": "list"}).encode()))
        time.sleep(1.0)
        close()

    daemon.source.close = slow_close
    try:
        run_beside(daemon, lambda: wait_until(lambda: daemon.reporter.counters()["connected"]))
        (reply,) = ctl.wait(sent, timeout=5)
        assert not reply["ok"] and reply["error"]["code"] == "failed", reply
        assert reply["error"]["message"] == "the daemon is stopping; nothing was done", reply
    finally:
        ctl.close()
