"""Per-stage latency of the device vision pipeline, single thread: median and p95 in ms.

Stages: ``grab`` (replay of synthetic full-hand frames, decoded once and held in memory as a
camera hands over arrays), ``roi`` (search on a reduced copy, the default), ``quality``,
``preprocess``, ``inference`` per runtime and precision (onnxruntime fp32 / int8 QDQ, TFLite
fp32 / int8), ``pack``. Two reference rows are left out of the pipeline's sum:
``grab_decode`` (the PNG decoded on every grab) and ``roi_full_resolution`` (the search on the
whole frame). Models are the project's backbone with random weights, converted by the
exporter's own converters (speed does not depend on the weights). One JSON object per line per
stage, then a summary with each inference's ratio to onnxruntime fp32 (the baseline). The first
lines are the ROI search's accuracy on those frames against their ground truth, reduced and
full-resolution search.

    OMP_NUM_THREADS=1 python bench/vision.py                    # backbone "light", ~1 min
    python bench/vision.py --backbone res18 --repeats 100
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent import codes, quality, roi  # noqa: E402
from agent.capture.replay import ReplaySource  # noqa: E402
from agent.inference import open_backend  # noqa: E402
from agent.preprocess import DEFAULT_SPEC, preprocess  # noqa: E402


def timed(fn: Callable[[int], object], repeats: int, warmup: int = 3) -> dict:
    for i in range(warmup):
        fn(i)
    ms = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(float(np.median(ms)), 4),
        "p95_ms": round(float(np.percentile(ms, 95)), 4),
        "n": repeats,
    }


def roi_accuracy(frames_dir: Path, found: list[roi.RoiResult]) -> dict:
    """Against the truth JSON beside each frame: the issue's goal is centre error <= 5% of the
    ROI side and angle error <= 5 degrees on >= 95% of medium frames."""
    centre, angle, good = [], [], 0
    truths = [json.loads(p.read_text()) for p in sorted(frames_dir.glob("*.json"))]
    for r, t in zip(found, truths, strict=True):
        if r.square is None:
            continue
        c = float(np.hypot(*(np.asarray(r.square.centre) - t["centre"])) / t["side"])
        a = float(abs((r.square.angle_deg - t["angle_deg"] + 180) % 360 - 180))
        centre.append(c)
        angle.append(a)
        good += c <= 0.05 and a <= 5.0
    return {
        "frames": len(truths),
        "found_within_goal": round(good / len(truths), 4),
        "centre_err_median": round(float(np.median(centre)), 4) if centre else None,
        "centre_err_p95": round(float(np.percentile(centre, 95)), 4) if centre else None,
        "angle_err_median_deg": round(float(np.median(angle)), 3) if angle else None,
        "angle_err_p95_deg": round(float(np.percentile(angle, 95)), 3) if angle else None,
    }


def build_models(backbone: str, bits: int, calib: np.ndarray, out: Path) -> dict[str, Path]:
    """The exporter's converters on a randomly initialised backbone (needs the [train] extra)."""
    import torch

    from export import convert_onnx, convert_tflite
    from export.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone(backbone, bits).eval()
    s = DEFAULT_SPEC
    paths = {
        "onnxruntime_fp32": out / "m.onnx",
        "onnxruntime_int8": out / "m_int8.onnx",
        "tflite_fp32": out / "m.tflite",
        "tflite_int8": out / "m_int8.tflite",
    }
    convert_onnx.export_fp32(net, s.channels, s.input_size, paths["onnxruntime_fp32"])
    convert_onnx.quantize_int8(paths["onnxruntime_fp32"], paths["onnxruntime_int8"], calib)
    convert_tflite.export_fp32(net, s.channels, s.input_size, paths["tflite_fp32"])
    convert_tflite.export_int8(net, calib, paths["tflite_int8"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="light")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--frames", type=int, default=100, help="distinct synthetic frames")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--level", default="medium")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)

    from export.synth.hands import write_hand_frames

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_hand_frames(tmp_path, ids=args.frames, samples=1, level=args.level, seed=args.seed)
        frames_dir = tmp_path / "print"
        frames = [
            cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            for p in sorted(frames_dir.iterdir())
            if p.suffix == ".png"
        ]
        full_res = roi.RoiConfig(search_px=0)
        found = [roi.extract(f) for f in frames]
        for name, cfg in (("search_px", roi.RoiConfig()), ("full_resolution", full_res)):
            acc = roi_accuracy(frames_dir, [roi.extract(f, cfg) for f in frames])
            print(json.dumps({"roi_accuracy": acc, "search": name, "level": args.level}))
        rois = [r.roi for r in found if r.roi is not None]
        tensors = [preprocess(r) for r in rois]
        # litert-torch prints notes ("Relu partition ...") on stdout, which carries the JSON
        with contextlib.redirect_stdout(sys.stderr):
            paths = build_models(args.backbone, args.bits, np.stack(tensors), tmp_path)

        rows: list[dict] = []

        def emit(stage: str, result: dict, **extra: object) -> None:
            row = {"stage": stage, **extra, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)

        with ReplaySource(frames_dir, loop=True) as src:
            for _ in frames:
                src.read()  # the first pass decodes and keeps; a looping replay then hands over
            emit("grab", timed(lambda i: src.read(), args.repeats), source="replay, in memory")
        with ReplaySource(frames_dir, loop=True, cache_mb=0) as src:
            result = timed(lambda i: src.read(), args.repeats)
            emit("grab_decode", result, source="replay png 640x480", reference=True)
        k = len(frames)
        emit("roi", timed(lambda i: roi.extract(frames[i % k]), args.repeats))
        result = timed(lambda i: roi.extract(frames[i % k], full_res), args.repeats)
        emit("roi_full_resolution", result, reference=True)
        emit("quality", timed(lambda i: quality.assess(frames[i % k], found[i % k]), args.repeats))
        m = len(rois)
        emit("preprocess", timed(lambda i: preprocess(rois[i % m]), args.repeats))
        last_out = None
        for name, path in paths.items():
            runtime, precision = name.rsplit("_", 1)
            with open_backend(path, runtime=runtime, threads=1) as be:
                result = timed(lambda i, be=be: be.run(tensors[i % m][None]), args.repeats)
                emit(
                    "inference",
                    result,
                    runtime=runtime,
                    precision=precision,
                    backbone=args.backbone,
                    layout=be.layout,
                    input_dtype=str(be.input.dtype),
                )
                last_out = be.outputs(rois[:1])
        emit("pack", timed(lambda i: codes.pack(last_out), args.repeats))

    base = next(r for r in rows if r.get("runtime") == "onnxruntime" and r["precision"] == "fp32")
    print(
        json.dumps(
            {
                "summary": True,
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
                "threads": 1,
                "roi_found": f"{len(rois)}/{len(frames)}",
                "inference_ratio_to_onnxruntime_fp32": {
                    f"{r['runtime']}_{r['precision']}": round(r["median_ms"] / base["median_ms"], 3)
                    for r in rows
                    if r["stage"] == "inference"
                },
                "pipeline_median_ms_excl_inference": round(
                    sum(
                        r["median_ms"]
                        for r in rows
                        if r["stage"] != "inference" and not r.get("reference")
                    ),
                    3,
                ),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
