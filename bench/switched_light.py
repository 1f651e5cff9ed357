"""Time of one capture of both modalities under switched light, against the fixed order.

One camera under switched LEDs (the Pi profile's layout): each switch waits the settle delay and
drops a frame. ``lit_first`` is the daemon's order (``SwitchedLight.capture_set``: the modality
whose light is already on first); ``print_first`` always takes print then vein, as the daemon
did before, switching twice per capture. A replay at the camera's frame rate stands in for the
sensor and gpiozero's mock pins for the LEDs, so the figures are the frame cadence and the
settle delay, not a particular camera. One JSON line per order, then the ratio.

With ``--bundle``, also the time from a capture's first frame to its probe (ROI, quality gate,
both models, codes) through the daemon's own camera and engine, on replayed full-hand frames:
``read_ahead`` is the daemon (the first frame goes through the pipeline while the camera
thread waits out the switch for the second), ``in_turn`` takes both frames, then runs the
pipeline, as the daemon did before; captures alternate between the two.

    python bench/switched_light.py                     # 15 fps, 50 ms settle (the Pi profile)
    python bench/switched_light.py --fps 30 --settle-ms 20
    python bench/switched_light.py --bundle runs/bench-e2e/bundle   # bench/e2e.py builds it
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.capture.illumination import Illumination, SwitchedLight  # noqa: E402
from agent.capture.replay import ReplaySource  # noqa: E402

BOTH = ("print", "vein")


def timed_captures(cam: SwitchedLight, order: str, n: int) -> list[float]:
    times = []
    for _ in range(n + 1):  # the first capture starts with both lights off: left out
        t0 = time.monotonic()
        if order == "lit_first":
            cam.capture_set(BOTH)
        else:
            for m in BOTH:
                cam.capture(m)
        times.append((time.monotonic() - t0) * 1e3)
    return times[1:]


def pipeline_rows(a: argparse.Namespace) -> dict[str, float]:
    """Median ms from a capture's first frame to its probe, read ahead and in turn."""
    from agent.decide import MODE_MODALITIES
    from agent.run_cli import build
    from export.demo.broker import Broker
    from export.demo.frames import write_replay
    from export.demo.live import DEVICE, write_agent_config

    ms: dict[str, list[float]] = {"read_ahead": [], "in_turn": []}
    infer: dict[str, list[float]] = {"read_ahead": [], "in_turn": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # one still hand: each frame the camera gives shows the same pose, as during one
        # presentation (the replay has no light of its own: the vein model hashes it too)
        write_replay(out / "replay", [0], [], 0, 1, 0, "medium", first_sample=20)
        with Broker(out / "broker", devices=(DEVICE,)) as broker:  # the config names one
            ns = argparse.Namespace(runtime=a.runtime, precision=a.precision, mode="multi",
                                    fmr="0.01", captures=3)  # fmt: skip
            over = {
                "camera": {"layout": "switched", "loop": True, "fps": a.fps,
                           "illumination": {"settle_ms": round(a.settle_ms)}},
                "logging": {"level": "WARNING"},
            }  # fmt: skip
            daemon = build(write_agent_config(out, a.bundle, broker, ns, over), False)
            wanted = MODE_MODALITIES["multi"]
            try:
                for i in range(2 * a.captures + 2):  # the first of each way left out
                    if i % 2 == 0:
                        capture = daemon.source.read(wanted)
                        probe = daemon.engine.vision(capture.images)
                        taken, way = capture.taken, "read_ahead"
                    else:
                        frames = daemon.source.rig.capture_set(wanted)
                        taken = min(f.timestamp for f in frames.values())
                        probe = daemon.engine.vision({m: f.image for m, f in frames.items()})
                        way = "in_turn"
                    done = time.monotonic()
                    if len(probe.codes) != 2:
                        sys.exit(f"capture {i}: no code for both modalities ({probe.rejected})")
                    if i >= 2:
                        ms[way].append((done - taken) * 1e3)
                        infer[way].append(probe.timings["infer"])
            finally:
                daemon.close()
    rows = {k: statistics.median(v) for k, v in ms.items()}
    for way, med in rows.items():
        print(json.dumps({
            "bench": "switched_light_pipeline", "way": way, "fps": a.fps,
            "settle_ms": a.settle_ms, "runtime": a.runtime, "precision": a.precision,
            "captures": a.captures, "median_ms_first_frame_to_probe": round(med, 1),
            "infer_median_ms": round(statistics.median(infer[way]), 2),
        }), flush=True)  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate")
    p.add_argument("--settle-ms", type=float, default=50.0, help="camera.illumination.settle_ms")
    p.add_argument("--captures", type=int, default=12, help="captures per order")
    p.add_argument("--bundle", type=Path, help="also time the pipeline with this bundle")
    p.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    a = p.parse_args()
    if a.bundle is not None and not (a.bundle / "manifest.json").exists():
        sys.exit(f"no bundle at {a.bundle}: run `python bench/e2e.py` first")

    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    Device.pin_factory = MockFactory()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(4):
            cv2.imwrite(str(Path(tmp) / f"{i:05d}.png"), np.full((48, 64), 80 + i, np.uint8))
        for order in ("print_first", "lit_first"):
            source = ReplaySource(Path(tmp), loop=True, fps=a.fps)
            source.open()
            cam = SwitchedLight(source, Illumination(17, 27, settle_s=a.settle_ms / 1e3))
            try:
                ms = timed_captures(cam, order, a.captures)
            finally:
                cam.close()
                Device.pin_factory.reset()
            rows[order] = statistics.median(ms)
            print(json.dumps({
                "bench": "switched_light", "order": order, "fps": a.fps,
                "settle_ms": a.settle_ms, "captures": a.captures,
                "median_ms_per_capture_of_both": round(rows[order], 1),
            }), flush=True)  # fmt: skip
    summary = {"lit_first_over_print_first": round(rows["lit_first"] / rows["print_first"], 3)}
    if a.bundle is not None:
        piped = pipeline_rows(a)
        summary["read_ahead_over_in_turn"] = round(piped["read_ahead"] / piped["in_turn"], 3)
        summary["read_ahead_saves_ms"] = round(piped["in_turn"] - piped["read_ahead"], 1)
    print(json.dumps({"bench": "switched_light_summary", **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
