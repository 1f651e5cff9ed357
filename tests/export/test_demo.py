"""The demo's device part: a real mosquitto, ``palm-agent run`` as a child process on replayed
full-hand frames, enrollment and decisions through MQTT (the small ONNX bundle of the agent
tests stands in for a trained one; training and export have their own tests)."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from export.demo.broker import start_broker
from export.demo.controller import Controller, NoReply
from export.demo.frames import write_replay
from export.demo.live import run_live
from tests.agent.conftest import make_bundle


def test_enroll_and_decide_over_mqtt(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    shots = write_replay(tmp_path / "replay", [0, 1], [5], 2, 1, 0, "medium", first_sample=8)
    assert [s.role for s in shots] == ["enroll"] * 4 + ["genuine"] * 2 + ["impostor"]
    assert len(list((tmp_path / "replay" / "vein").glob("*.png"))) == len(shots)
    a = argparse.Namespace(runtime="onnx", precision="fp32", mode="multi", fmr="0.01", captures=2)

    live = run_live(tmp_path, bundle, shots, a)

    log = (tmp_path / "device" / "agent.log").read_text()
    assert [e["ok"] for e in live["enroll"]] == [True, True], (live["enroll"], log[-2000:])
    assert [e["result"]["captures"] for e in live["enroll"]] == [{"print": 2, "vein": 2}] * 2
    assert sorted(live["listed"]) == ["0001", "0002"]
    assert len(live["probes"]) == 3
    for p in live["probes"]:
        doc = p["decision"]
        assert doc is not None, p
        assert doc["event_id"] == p["reply"]["result"]["event_id"]
        assert doc["decision"] in ("granted", "unknown")
        assert set(doc["distances"]) >= {"print", "vein"}
    assert live["agent_exit"] == 0
    assert live["availability_after_stop"] == "stopped"
    json.dumps(live, default=str)  # what the summary writes


def test_a_command_to_a_device_that_exited_fails_at_once(tmp_path):
    """Nobody answers on the broker: with the device gone the wait ends at once, not after 90 s."""
    broker = start_broker(tmp_path / "broker", devices=("dev1",))
    ctl = Controller(broker.port, "dev1", v5=broker.mqtt5)
    try:
        t0 = time.monotonic()
        with pytest.raises(NoReply, match="the device exited before it answered enroll"):
            ctl.command("enroll", {"subject": "0001"}, timeout=90, alive=lambda: False)
        assert time.monotonic() - t0 < 5
        with pytest.raises(NoReply, match="no reply to list within 1s"):
            ctl.command("list", timeout=1, alive=lambda: True)
    finally:
        ctl.close()
        broker.stop()
