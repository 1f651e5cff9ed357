"""Single-thread latency and size of every exported form of a backbone, vs fp32 onnxruntime.

Prints one JSON object per (backbone, modality, format, precision) and a summary line. Latency
needs no trained weights (the graph is the same), so the nets are freshly initialised; with
``--checkpoint`` the trained model is exported as a bundle too and its parity rows (bit
agreement, EER deltas) are printed, which is what the int8 goal is judged on.

    python bench/infer.py --backbones res18,light --runs 50
    python bench/infer.py --checkpoint runs/tiny.pt --calib 100 [--onnx-weights int8]

ONNX int8 is timed with both weight types (``palm-export export --onnx-weights``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _latencies(backends: list, x: np.ndarray, runs: int, warmup: int = 5) -> list[tuple]:
    """Median and p95 per backend, the backends taking turns run by run.

    On a shared machine the load changes within seconds; interleaving lets every backend see
    the same load, so the ratios to fp32 onnxruntime stay meaningful when absolute times do not.
    """
    for backend in backends:
        for _ in range(warmup):
            backend.run(x)
    times: list[list[float]] = [[] for _ in backends]
    for _ in range(runs):
        for backend, own in zip(backends, times, strict=True):
            t = time.perf_counter()
            backend.run(x)
            own.append(1e3 * (time.perf_counter() - t))
    return [(float(np.median(t)), float(np.percentile(t, 95))) for t in times]


def bench_backbone(name: str, bits: int, runs: int, modalities: list[str], tmp: Path) -> list:
    import torch

    from agent.inference import open_backend
    from export import convert_onnx, convert_tflite
    from export.backbones import create_backbone

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 128, 128)).astype(np.float32)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    rows = []
    for modality in modalities:
        net = create_backbone(name, bits).eval()
        d = tmp / f"{name}-{modality}"
        d.mkdir()
        files = {
            ("onnx", "fp32"): d / "fp32.onnx",
            ("onnx", "int8"): d / "int8.onnx",
            ("onnx", "int8, int8 weights"): d / "int8.s8.onnx",
            ("tflite", "fp32"): d / "fp32.tflite",
            ("tflite", "int8"): d / "int8.tflite",
        }
        # litert-torch prints notes ("Relu partition ...") on stdout, which carries the JSON
        with contextlib.redirect_stdout(sys.stderr):
            convert_onnx.export_fp32(net, 3, 128, files["onnx", "fp32"])
            convert_onnx.quantize_int8(files["onnx", "fp32"], files["onnx", "int8"], calib)
            convert_onnx.quantize_int8(
                files["onnx", "fp32"], files["onnx", "int8, int8 weights"], calib, weights="int8"
            )
            convert_tflite.export_fp32(net, 3, 128, files["tflite", "fp32"])
            convert_tflite.export_int8(net, calib, files["tflite", "int8"])
        with contextlib.ExitStack() as stack:
            backends = [stack.enter_context(open_backend(p, threads=1)) for p in files.values()]
            stats = _latencies(backends, x, runs)
        base = stats[0][0]  # fp32 onnxruntime comes first
        for ((fmt, precision), path), backend, (median, p95) in zip(
            files.items(), backends, stats, strict=True
        ):
            rows.append(
                {
                    "backbone": name,
                    "modality": modality,
                    "format": fmt,
                    "precision": precision,
                    "runtime": backend.runtime,
                    "median_ms": round(median, 3),
                    "p95_ms": round(p95, 3),
                    "size_bytes": path.stat().st_size,
                    "vs_fp32_onnxruntime": round(median / base, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def parity_rows(checkpoint: str, calib: int, tmp: Path, onnx_weights: str) -> None:
    from export.bundle_build import export_bundle
    from export.checkpoint import load_checkpoint
    from export.data.split import load_split

    model, ckpt = load_checkpoint(checkpoint)
    train, test = load_split(ckpt, "train"), load_split(ckpt, "test")
    with contextlib.redirect_stdout(sys.stderr):  # the converters' notes, as above
        report = export_bundle(
            model,
            ckpt,
            train,
            test,
            tmp / "bundle",
            ["onnx", "tflite"],
            ["fp32", "int8"],
            calib,
            allow_degraded=True,
            onnx_weights=onnx_weights,
        )
    for row in report["files"]:
        print(
            json.dumps(
                {
                    "checkpoint": checkpoint,
                    "file": row["file"],
                    "bit_agreement": round(row["bit_agreement"], 5),
                    "eer_delta_pp": {
                        m: round(s["eer_delta_pp"], 3) for m, s in row["modes"].items()
                    },
                    "passed": row["passed"],
                }
            ),
            flush=True,
        )


def main() -> None:
    from export.convert_onnx import WEIGHT_TYPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="res18,light")
    p.add_argument("--modalities", default="print,vein")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--checkpoint", help="also export this trained checkpoint and report parity")
    p.add_argument("--calib", type=int, default=100)
    p.add_argument("--onnx-weights", choices=WEIGHT_TYPES, default="uint8")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in filter(None, args.backbones.split(",")):
            rows += bench_backbone(
                name, args.bits, args.runs, args.modalities.split(","), Path(tmp)
            )
        int8 = [r["vs_fp32_onnxruntime"] for r in rows if r["precision"] == "int8"]
        if int8:
            print(
                json.dumps(
                    {
                        "summary": "int8 latency vs fp32 onnxruntime",
                        "worst_ratio": max(int8),
                        "goal": 0.5,
                        "met": max(int8) <= 0.5,
                    }
                )
            )
        if args.checkpoint:
            parity_rows(args.checkpoint, args.calib, Path(tmp), args.onnx_weights)


if __name__ == "__main__":
    main()
