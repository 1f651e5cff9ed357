"""The palm ROI search per camera resolution: its speed on the reduced copy and its accuracy.

The search runs on a copy whose long side is at most ``RoiConfig.search_px``; what that copy
costs to make grows with the camera's resolution (a Pi's 640x480, a Jetson's 1280x720). Each
size renders ``--frames`` synthetic full-hand frames with exact ground truth and times the
default search and, as the baseline of the same run, the search on the full-resolution frame
(``ratio_to_full_resolution``: this machine's drift falls on both alike). Accuracy is the
issue's goal: centre error <= 5% of the ROI side and angle error <= 5 degrees. One JSON object
per line per size.

    python bench/roi_search.py
    python bench/roi_search.py --sizes 640x480 1280x720 --frames 60 --repeats 10 --level hard
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import roi
from export.synth.hands import render_hand_frame


def within_goal(found: roi.RoiResult, truth: dict) -> bool:
    if found.square is None:
        return False
    centre = np.hypot(*np.subtract(found.square.centre, truth["centre"])) / truth["side"]
    angle = abs((found.square.angle_deg - truth["angle_deg"] + 180) % 360 - 180)
    return bool(centre <= 0.05 and angle <= 5.0)


def one_size(size: tuple[int, int], frames: int, repeats: int, level: str) -> dict:
    shots = [
        render_hand_frame(
            i % 25, i // 25, seed=11, level=level, size=size, hand=("left", "right")[i % 2]
        )
        for i in range(frames)
    ]
    configs = {"search": roi.RoiConfig(), "full_resolution": roi.RoiConfig(search_px=0)}
    us: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for frame, _truth in shots:
            for name, cfg in configs.items():  # in turn, so that drift falls on both
                t0 = time.perf_counter()
                roi.extract(frame, cfg)
                us[name].append((time.perf_counter() - t0) * 1e6)
    median = {name: statistics.median(v) for name, v in us.items()}
    return {
        "bench": "roi_search",
        "size": f"{size[0]}x{size[1]}",
        "level": level,
        "frames": frames,
        "search_median_us": round(median["search"], 1),
        "full_resolution_median_us": round(median["full_resolution"], 1),
        "ratio_to_full_resolution": round(median["search"] / median["full_resolution"], 3),
        "within_goal": {
            name: sum(within_goal(roi.extract(f, cfg), t) for f, t in shots) / frames
            for name, cfg in configs.items()
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"],
                   help="frame sizes, WIDTHxHEIGHT")  # fmt: skip
    p.add_argument("--frames", type=int, default=40, help="distinct frames per size")
    p.add_argument("--repeats", type=int, default=10, help="passes over the frames")
    p.add_argument("--level", default="medium", choices=("easy", "medium", "hard"))
    a = p.parse_args()
    cv2.setNumThreads(1)  # as the daemon runs it (agent/run_cli.py)
    for s in a.sizes:
        try:
            w, h = (int(v) for v in s.lower().split("x"))
        except ValueError:
            p.error(f"--sizes: {s!r} is not WIDTHxHEIGHT, e.g. 640x480")
        print(json.dumps(one_size((w, h), a.frames, a.repeats, a.level)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
