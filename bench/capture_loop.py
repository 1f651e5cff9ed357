"""The daemon's capture loop in one process, with and without reporting each decision on MQTT.

``bench/e2e.py`` sees the whole device from outside; this shows what the MQTT client costs the
capture loop from inside. The same daemon that ``palm-agent run`` builds (its config, bundle,
replay camera and engine) runs the loop itself, against a private mosquitto: grab, vision,
decide, and in ``report`` rounds the decision handed to the reporter, which publishes it from
its own threads while the loop goes on with the next capture. ``quiet`` rounds skip the
hand-over. Rounds alternate, so that the machine's drift falls on both alike.

Per round, one JSON line: the median of each stage in ms (the daemon's own stage names, plus
``report``, the hand-over, and ``total``), and each thread's CPU time per capture in ms
(user + system, from ``/proc/self/task``; the runtime's unnamed worker threads by id). The
difference between the two kinds of round in the ``roi`` stage is the MQTT client's Python
(pump and paho threads) holding the interpreter lock while the next capture searches for the
palm.

    python bench/capture_loop.py                      # the bundle bench/e2e.py builds
    python bench/capture_loop.py --runtime onnx --precision fp32 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.commands import Dispatcher  # noqa: E402
from agent.decide import MODE_MODALITIES  # noqa: E402
from agent.run_cli import build  # noqa: E402
from bench.procfs import cpu_seconds  # noqa: E402
from export.demo.broker import Broker  # noqa: E402
from export.demo.frames import write_replay  # noqa: E402
from export.demo.live import DEVICE, write_agent_config  # noqa: E402


def thread_cpu_ms() -> dict[str, float]:
    """CPU ms so far per thread of this process, named where Python knows the thread."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    return {
        names.get(int(tid), f"thread-{tid}"): cpu_seconds(Path(f"/proc/self/task/{tid}/stat")) * 1e3
        for tid in os.listdir("/proc/self/task")
    }


def one_round(daemon, report: bool, captures: int) -> dict:
    stages: dict[str, list[float]] = {}
    wanted = MODE_MODALITIES[daemon.settings.mode]
    cpu0 = thread_cpu_ms()
    for _ in range(captures):
        t0 = time.perf_counter()
        capture = daemon.source.read(wanted)
        probe = daemon.engine.vision(capture.images)
        doc = daemon.engine.decide(probe, daemon.settings, capture.taken)
        t1 = time.perf_counter()
        if report:
            daemon.reporter.decision(doc)
        t2 = time.perf_counter()
        for stage, ms in {**probe.timings, "report": (t2 - t1) * 1e3}.items():
            stages.setdefault(stage, []).append(ms)
        stages.setdefault("total", []).append((t2 - t0) * 1e3)
    cpu1 = thread_cpu_ms()
    cpu = {k: round((v - cpu0.get(k, 0.0)) / captures, 3) for k, v in cpu1.items()}
    return {
        "bench": "capture_loop",
        "round": "report" if report else "quiet",
        "stage_median_ms": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "thread_cpu_ms_per_capture": {k: v for k, v in cpu.items() if v > 0},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bench-e2e" / "bundle",
                   help="a bundle with both formats (bench/e2e.py builds this one)")  # fmt: skip
    p.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--threads", type=int, default=2, help="inference threads")
    p.add_argument("--captures", type=int, default=2000, help="captures per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds, quiet and report in turn")
    a = p.parse_args()
    if not (a.bundle / "manifest.json").exists():
        sys.exit(f"no bundle at {a.bundle}: run `python bench/e2e.py` first, or pass --bundle")
    out = Path(tempfile.mkdtemp(prefix="palm-capture-loop-"))
    try:
        write_replay(out / "replay", list(range(4)), [], 0, 3, 0, "medium", first_sample=20)
        with Broker(out / "broker", devices=(DEVICE,)) as broker:
            ns = argparse.Namespace(runtime=a.runtime, precision=a.precision, mode="multi",
                                    fmr="0.01", captures=3)  # fmt: skip
            over = {
                "bundle": {"threads": a.threads},
                "camera": {"loop": True, "fps": 1000},
                "logging": {"level": "WARNING"},
            }
            daemon = build(write_agent_config(out, a.bundle, broker, ns, over))
            daemon.reporter.start(Dispatcher(daemon, 65536))
            deadline = time.monotonic() + 10
            while not daemon.reporter.counters()["connected"]:
                if time.monotonic() > deadline:
                    sys.exit("the daemon did not connect to the bench's broker")
                time.sleep(0.05)
            try:
                for i in range(a.rounds):
                    print(json.dumps(one_round(daemon, i % 2 == 1, a.captures)), flush=True)
            finally:
                daemon.reporter.stop(2)
                daemon.close()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
