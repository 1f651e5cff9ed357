"""The device part of the demo: a private broker, ``palm-agent run``, a controller on MQTT.

The daemon runs with the ``command`` trigger: the controller enrolls each subject with the
``enroll`` command (the daemon takes the next frames of its replayed camera) and then asks for
one ``capture`` per probe, so every decision on ``palm/<id>/decision`` can be tied to the person
who was shown, by its ``event_id``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from export.demo.amqtt_broker import AmqttBroker
from export.demo.broker import Broker, start_broker
from export.demo.controller import Controller, NoReply
from export.demo.frames import Shot

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "dev1"


def write_agent_config(
    out: Path,
    bundle: Path,
    broker: Broker | AmqttBroker,
    a: argparse.Namespace,
    over: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """``out/device/agent.yaml`` for the demo's device; ``over`` overrides keys per section."""
    live = out / "device"
    for f in ("outbox.sqlite", "templates.sqlite"):
        for p in live.glob(f + "*"):
            p.unlink()
    live.mkdir(parents=True, exist_ok=True)
    doc = {
        "device": {"id": DEVICE, "name": "demo palm reader"},
        "mqtt": broker.device_section(
            DEVICE,
            stats_interval=5,
            keepalive=10,
            reconnect_min=0.2,
            reconnect_max=2,
        ),
        "outbox": {"path": str(live / "outbox.sqlite"), "flush_timeout": 5},
        "bundle": {
            "path": str(bundle),
            "runtime": a.runtime,
            "precision": a.precision,
            "threads": 2,
        },
        "store": {"path": str(live / "templates.sqlite"), "key_path": str(live / "device.key")},
        "match": {"mode": a.mode, "identify": True, "fmr": a.fmr},
        "camera": {
            "source": "replay",
            "layout": "dual",
            "replay_path": str(out / "replay" / "print"),
            "vein_replay_path": str(out / "replay" / "vein"),
            "loop": False,
            "fps": 30,
        },
        # the replay's print and vein frames are one pose drawn twice, as a registered rig sees it
        "roi": {"shared": True},
        "trigger": {"kind": "command", "cooldown": 0},
        "enroll": {"captures": a.captures, "max_spread": 12, "timeout": 30},
        "logging": {"level": "INFO"},
    }
    for key, value in (over or {}).items():
        doc[key] = {**doc.get(key, {}), **value}
    path = live / "agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_agent(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    print(f"$ palm-agent run --config {config}   (log: {log})", flush=True)
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip


def stop_agent(proc: subprocess.Popen, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=5)


def run_live(out: Path, bundle: Path, shots: list[Shot], a: argparse.Namespace) -> dict[str, Any]:
    """Enroll and probe through MQTT; returns replies, decisions and timings for the report."""
    shutil.rmtree(out / "broker", ignore_errors=True)  # no sessions left from an earlier run
    broker = start_broker(out / "broker", devices=(DEVICE,))
    print(broker.describe(), flush=True)
    config = write_agent_config(out, bundle, broker, a)
    ctl = Controller(broker.port, DEVICE, v5=broker.mqtt5)
    t0 = time.monotonic()
    agent = start_agent(config, out / "device" / "agent.log")
    result: dict[str, Any] = {"enroll": [], "probes": [], "config": str(config)}
    result["broker"], result["broker_log"] = broker.describe(), str(broker.log)
    log = out / "device" / "agent.log"

    def alive() -> bool:
        return agent.poll() is None

    try:
        deadline = time.monotonic() + 60
        while not ctl.wait_for(lambda: ctl.availability == "online", 0.5):
            if agent.poll() is not None or time.monotonic() > deadline:
                tail = (out / "device" / "agent.log").read_text()[-1500:]
                raise SystemExit(f"demo: the daemon did not come online:\n{tail}")
        result["online_s"] = round(time.monotonic() - t0, 2)
        print(f"daemon online after {result['online_s']} s")
        for shot in tqdm([s for s in shots if s.role == "enroll"][:: a.captures], desc="enroll"):
            # distinct identities by construction: one the model cannot tell from an enrolled
            # one is still enrolled (the device logs a WARNING), and the decisions measure it
            enroll = {"subject": shot.label, "captures": a.captures, "allow_duplicate": True}
            reply = ctl.command("enroll", enroll, timeout=90, alive=alive)
            result["enroll"].append({"subject": shot.label, **_brief(reply)})
            tqdm.write(f"  enroll {shot.label}: {_enrolled(reply)}")
        listed = ctl.command("list", alive=alive)
        result["listed"] = listed.get("result", {}).get("subjects", [])
        probes = [s for s in shots if s.role != "enroll"]
        for shot in tqdm(probes, desc="probes"):
            reply = ctl.command("capture", timeout=30, alive=alive)
            doc = None
            if reply.get("ok") and reply["result"].get("event_id"):
                doc = ctl.decision(reply["result"]["event_id"])
            result["probes"].append({"shot": shot, "reply": _brief(reply), "decision": doc})
        ctl.wait_for(lambda: bool(ctl.stats), 10)
        result["stats"] = ctl.stats[-1] if ctl.stats else None
    except NoReply as e:
        code = agent.poll()
        raise SystemExit(
            f"demo: {e}"
            + (f" (exit code {code})" if code is not None else "")
            + f"; the end of its log {log}:\n{log.read_text(errors='replace')[-1500:]}"
        ) from None
    finally:
        rc = stop_agent(agent)
        result["agent_exit"] = rc
        result["availability_after_stop"] = (
            ctl.availability if ctl.wait_for(lambda: ctl.availability != "online", 5) else None
        )
        ctl.close()
        broker.stop()
    return result


def _enrolled(reply: dict[str, Any]) -> str:
    """The enroll reply in a line, naming an enrolled subject the model cannot tell apart."""
    if not reply["ok"]:
        return str(reply["error"])
    twins = reply["result"].get("duplicates", [])
    return "ok" + "".join(
        f"; its {t['modality']} matches {t['subject']} ({t['distance']} bits, threshold "
        f"{t['threshold']:g})"
        for t in twins
    )


def _brief(reply: dict[str, Any]) -> dict[str, Any]:
    keep = ("ok", "result", "error", "_round_trip_ms")
    return {k: reply[k] for k in keep if k in reply}
