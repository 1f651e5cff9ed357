"""Time of one capture of both modalities under switched light, against the fixed order.

One camera under switched LEDs (the Pi profile's layout): each switch waits the settle delay and
drops a frame. ``lit_first`` is the daemon's order (``SwitchedLight.capture_set``: the modality
whose light is already on first); ``print_first`` always takes print then vein, as the daemon
did before, switching twice per capture. A replay at the camera's frame rate stands in for the
sensor and gpiozero's mock pins for the LEDs, so the figures are the frame cadence and the
settle delay, not a particular camera. One JSON line per order, then the ratio.

    python bench/switched_light.py                     # 15 fps, 50 ms settle (the Pi profile)
    python bench/switched_light.py --fps 30 --settle-ms 20
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate")
    p.add_argument("--settle-ms", type=float, default=50.0, help="camera.illumination.settle_ms")
    p.add_argument("--captures", type=int, default=12, help="captures per order")
    a = p.parse_args()

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
    print(json.dumps({
        "bench": "switched_light_summary",
        "lit_first_over_print_first": round(rows["lit_first"] / rows["print_first"], 3),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
