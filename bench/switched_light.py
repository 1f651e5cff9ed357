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
pipeline, as the daemon did before; captures alternate between the two. And an idle reader
against one with a hand in front of it (the same camera and engine, looking back to back for
``--idle-seconds`` each): frames taken per capture, light switches per second and the process's
CPU time per second; an idle reader looks under the light already on, one frame per look.

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
from collections import Counter
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


def count_switches_and_frames(daemon) -> Counter:
    """Count the frames the daemon's rig takes and the times its light changes."""
    rig, light = daemon.source.rig, daemon.source.rig.light
    counts: Counter = Counter()
    take, select = rig.capture, light.select

    def capture(modality: str, timeout: float = 1.0):
        counts["frames"] += 1
        return take(modality, timeout)

    def switch(modality: str | None) -> bool:
        changed = select(modality)
        counts["switches"] += changed
        return changed

    rig.capture, light.select = capture, switch
    return counts


def looking(a: argparse.Namespace, image: np.ndarray) -> dict:
    """The daemon's camera and engine looking back to back at one still scene."""
    from agent.decide import MODE_MODALITIES
    from agent.run_cli import build
    from export.demo.broker import Broker
    from export.demo.live import DEVICE, write_agent_config

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "replay").mkdir()
        cv2.imwrite(str(out / "replay" / "00000.png"), image)
        with Broker(out / "broker", devices=(DEVICE,)) as broker:  # the config names one
            ns = argparse.Namespace(runtime=a.runtime, precision=a.precision, mode="multi",
                                    fmr="0.01", captures=3)  # fmt: skip
            over = {
                "camera": {"layout": "switched", "loop": True, "fps": a.fps,
                           "replay_path": str(out / "replay"),
                           "illumination": {"settle_ms": round(a.settle_ms)}},
                "logging": {"level": "WARNING"},
            }  # fmt: skip
            daemon = build(write_agent_config(out, a.bundle, broker, ns, over), False)
            wanted, looks = MODE_MODALITIES["multi"], 0
            try:
                daemon.engine.vision(daemon.source.read(wanted).images)  # the light comes on
                counts = count_switches_and_frames(daemon)
                cpu0, t0 = time.process_time(), time.monotonic()
                while time.monotonic() - t0 < a.idle_seconds:
                    daemon.engine.vision(daemon.source.read(wanted).images)
                    looks += 1
                wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
                counts = Counter(counts)  # the count so far: closing turns the light off
            finally:
                daemon.close()
    return {
        "seconds": round(wall, 1),
        "captures": looks,
        "frames_per_capture": round(counts["frames"] / looks, 2),
        "light_switches_per_s": round(counts["switches"] / wall, 2),
        "cpu_ms_per_s": round(cpu / wall * 1e3, 1),
    }


def idle_rows(a: argparse.Namespace) -> dict[str, dict]:
    """Looking with nobody there (a lit, empty scene), then with a still hand there."""
    from export.synth.hands import render_hand_frame

    empty = np.random.default_rng(0).normal(70, 4, (480, 640)).clip(0, 255).astype(np.uint8)
    scenes = {"idle": empty, "hand": render_hand_frame(0, 0, seed=1, level="medium")[0]}
    rows = {}
    for scene, image in scenes.items():
        rows[scene] = looking(a, image)
        print(json.dumps({"bench": "switched_light_idle", "scene": scene, "fps": a.fps,
                          "settle_ms": a.settle_ms, **rows[scene]}), flush=True)  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate")
    p.add_argument("--settle-ms", type=float, default=50.0, help="camera.illumination.settle_ms")
    p.add_argument("--captures", type=int, default=12, help="captures per order")
    p.add_argument("--bundle", type=Path, help="also time the pipeline with this bundle")
    p.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--idle-seconds", type=float, default=10.0, help="per scene, with --bundle")
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
        idle = idle_rows(a)
        summary["idle_cpu_over_hand_cpu"] = round(
            idle["idle"]["cpu_ms_per_s"] / idle["hand"]["cpu_ms_per_s"], 3
        )
    print(json.dumps({"bench": "switched_light_summary", **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
