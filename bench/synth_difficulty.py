"""How hard each synthetic level is for trivial matchers, and how fast it is generated.

For each level: generate ids × samples paired ROIs in this process and with ``--workers``
processes (the two must be byte-identical), then score every genuine and impostor pair with two
matchers that know nothing about palms:

- raw32: cosine similarity of the ROI shrunk to 32×32 (INTER_AREA), raw grey levels;
- hp64:  cosine similarity of the ROI shrunk to 64×64 minus its Gaussian blur (sigma 3 px),
         i.e. the line structure without the illumination.

Distance = 1 − cosine; EER from export.metrics. The goal at ``medium``: both matchers between
20% and 45% EER for print and for vein (a learnt model must do better, a trivial one must not
get close to 0), at >= 100 ROI pairs/s on a 2-core machine.

    python bench/synth_difficulty.py [--ids 100 --samples 10 --workers 2 --levels easy medium hard]

Prints one JSON object per level.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from export.metrics import error_rates, pair_scores
from export.synth import generate_arrays


def raw32(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


def hp64(img: np.ndarray) -> np.ndarray:
    small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (small - cv2.GaussianBlur(small, (0, 0), 3.0)).ravel()


MATCHERS = {"raw32": raw32, "hp64": hp64}


def eer(images: np.ndarray, matcher) -> float:
    """All-pairs EER of one matcher over images (ids, samples, H, W)."""
    ids, samples = images.shape[:2]
    feats = np.stack([matcher(im) for im in images.reshape(-1, *images.shape[2:])])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    labels = np.repeat(np.arange(ids), samples)
    gen, imp = pair_scores(1.0 - feats @ feats.T, labels, labels, symmetric=True)
    return error_rates(gen, imp).eer


def bench_level(level: str, ids: int, samples: int, seed: int, workers: int) -> dict:
    t0 = time.perf_counter()
    p1, v1 = generate_arrays(ids, samples, level, seed, workers=0)
    t1 = time.perf_counter()
    p, v = generate_arrays(ids, samples, level, seed, workers=workers)
    t2 = time.perf_counter()
    pairs = ids * samples
    out = {
        "level": level,
        "ids": ids,
        "samples": samples,
        "seed": seed,
        "eer": {
            mod: {name: round(eer(arr, m), 4) for name, m in MATCHERS.items()}
            for mod, arr in (("print", p), ("vein", v))
        },
        "pairs_per_s": {"workers_1": round(pairs / (t1 - t0), 1)},
        "identical_across_workers": bool(np.array_equal(p, p1) and np.array_equal(v, v1)),
    }
    out["pairs_per_s"][f"workers_{workers}"] = round(pairs / (t2 - t1), 1)
    out["speedup"] = round((t1 - t0) / (t2 - t1), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--levels", nargs="+", default=["easy", "medium", "hard"])
    args = ap.parse_args()
    for level in args.levels:
        print(json.dumps(bench_level(level, args.ids, args.samples, args.seed, args.workers)))


if __name__ == "__main__":
    main()
