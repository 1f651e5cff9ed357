"""Identity centroids: min/mean pairwise Hamming distance, ours against the reference's search.

The reference fills the rows beyond the 2K Hadamard rows with random balanced codes, redrawing
the whole set up to 20 times until min > K/4 and mean >= K/2, and otherwise keeps the last draw.
That search is reproduced here (seeded) next to export.centroids.make_centroids.

    python bench/centroid_distance.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from export.centroids import distance_stats, hadamard, make_centroids


def reference_search(n: int, bits: int, seed: int, tries: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = hadamard(bits)
    base = np.concatenate([h, -h])
    codes = base
    for _ in range(tries):
        extra = np.ones((n - len(base), bits), dtype=np.int8)
        for row in extra:
            row[rng.permutation(bits)[: bits // 2]] = -1
        codes = np.concatenate([base, extra])
        s = distance_stats(codes)
        if s["min"] > bits / 4 and s["mean"] >= bits / 2:
            break
    return codes


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    bits = 32
    for n in (200, 500, 600):
        t = time.perf_counter()
        ours = make_centroids(n, bits, seed=0)
        t_ours = time.perf_counter() - t
        ref = [distance_stats(reference_search(n, bits, seed)) for seed in range(5)]
        row = {
            "bench": "centroid_distance",
            "ids": n,
            "bits": bits,
            "ours": {**distance_stats(ours), "seconds": round(t_ours, 2)},
            "reference_random_search": {
                "min_over_5_seeds": [r["min"] for r in ref],
                "mean": round(float(np.mean([r["mean"] for r in ref])), 3),
            },
        }
        row["min_distance_gain"] = row["ours"]["min"] - max(r["min"] for r in ref)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
