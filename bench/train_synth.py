"""Train the light backbone on synthetic `medium` palms and compare with trivial matchers.

Prints one JSON object: the evaluation table of the trained model on the reference test split
(EER, FNMR@FMR, rank-1 per mode, Hamming and cosine), the EER of two trivial matchers on the
same test split (cosine of 32x32 raw pixels; cosine of a 64x64 high-passed image), and whether
every mode's Hamming EER is below a third of the better trivial matcher's.

    python bench/train_synth.py                 # the full run: up to 30 minutes on 2 cores
    python bench/train_synth.py --minutes 5     # a shortened run (same data, fewer epochs)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from export.data import PalmArrays, from_synth, reference_split
from export.metrics import error_rates, pair_scores
from export.synth import generate_arrays
from export.train import fit, parse_args


def _cosine_eer(features: np.ndarray, labels: np.ndarray) -> float:
    f = features.reshape(len(features), -1).astype(np.float64)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    g, i = pair_scores(1.0 - f @ f.T, labels, labels, symmetric=True)
    return error_rates(g, i).eer


def _grey(img: np.ndarray) -> np.ndarray:
    return img.mean(axis=-1).astype(np.float32) if img.ndim == 3 else img.astype(np.float32)


def trivial_matchers(test: PalmArrays) -> dict[str, dict[str, float]]:
    out = {}
    for modality, imgs in (("print", test.print), ("vein", test.vein)):
        grey = [_grey(im) for im in imgs]
        raw = np.stack([cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA) for g in grey])
        small = [cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA) for g in grey]
        high = np.stack([s - cv2.GaussianBlur(s, (0, 0), 2.0) for s in small])
        out[modality] = {
            "raw32_cosine_eer": _cosine_eer(raw, test.labels),
            "highpass64_cosine_eer": _cosine_eer(high, test.labels),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=100)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--level", default="medium")
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    p.add_argument("--epochs", type=int, default=400, help="upper bound on epochs")
    p.add_argument("--model", default="light")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--out", help="run folder (default: a temporary one)")
    a = p.parse_args()
    t0 = time.monotonic()
    arrays = from_synth(*generate_arrays(a.ids, a.samples, a.level, 0, workers=a.threads))
    t_gen = time.monotonic() - t0
    test = arrays.subset(reference_split(arrays, 0)[1])
    trivial = trivial_matchers(test)
    best_trivial = min(v for m in trivial.values() for v in m.values())
    meta = {
        "ds": "synth",
        "root": None,
        "ids": a.ids,
        "samples": a.samples,
        "synth": {"ids": a.ids, "samples": a.samples, "level": a.level, "seed": 0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        args = parse_args(
            [
                "--model",
                a.model,
                "-b",
                str(a.batch),
                "--epoch",
                str(a.epochs),
                "--optimizer",
                "adam",
                "--lr",
                str(a.lr),
                "--threads",
                str(a.threads),
                "--eval-every",
                str(a.eval_every),
                "--time-limit",
                str(a.minutes),
                "--device",
                "cpu",
                "--out",
                a.out or tmp,
            ]
        )
        t1 = time.monotonic()
        report = fit(args, arrays, meta)
        t_train = time.monotonic() - t1
        epochs = json.loads((Path(args.out) / "metrics.jsonl").read_text().splitlines()[-1])
    table = {
        space: {
            m: {
                "eer": round(r["eer"], 4),
                "rank1": round(r["rank1"], 4),
                **{f"fnmr@{k}": round(v, 4) for k, v in r["fnmr_at_fmr"].items()},
            }
            for m, r in report[space].items()
        }
        for space in ("hamming", "cosine")
    }
    worst = max(r["eer"] for r in report["hamming"].values())
    print(
        json.dumps(
            {
                "bench": "train_synth",
                "model": a.model,
                "ids": a.ids,
                "samples": a.samples,
                "level": a.level,
                "epochs": epochs["epoch"],
                "train_s": round(t_train, 1),
                "generate_s": round(t_gen, 1),
                "threads": a.threads,
                "eval": table,
                "mean_eer": round(report["mean_eer"], 4),
                "output_margin": report["output_margin"],
                "trivial": trivial,
                "best_trivial_eer": round(best_trivial, 4),
                "worst_mode_eer_over_best_trivial": round(worst / best_trivial, 4),
                "goal_every_mode_below_third_of_trivial": bool(worst < best_trivial / 3),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
