"""1:N identification speed of agent.gallery against faiss IndexBinaryFlat, single thread.

One JSON object per gallery size N (random 32-bit codes, random probes: no early exit):
``kernel`` (``agent.gallery.KERNEL``: "c" for the compiled extension, "numpy" without it),
``ms_project`` / ``ms_faiss`` (one probe, top-1), ``*_top5``, ``*_batch64`` (64 probes, top-1)
and ``*_batch64_top5``, ``ms_floor`` (one read-only pass over the gallery: ``max``), and the
ratios project/faiss. A last object measures the Python-int / array (C or numpy) crossover for
``agent.gallery.INT_CROSSOVER``. Each time is the best of 5 repeats of a loop of >= ~20 ms.

    OMP_NUM_THREADS=1 python bench/match.py            # N = 1 .. 1e6 (about a minute)
    python bench/match.py --full                       # adds N = 1e7
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/faiss load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import timeit  # noqa: E402

import numpy as np  # noqa: E402

from agent import gallery  # noqa: E402


def best_ms(fn, budget_s: float = 0.02, repeat: int = 5) -> float:
    once = timeit.timeit(fn, number=1)
    number = max(1, int(budget_s / max(once, 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def bench_size(n: int, rng: np.random.Generator, faiss) -> dict:
    g = rng.integers(0, 2**32, (n, 1), dtype=np.uint32)
    probes = rng.integers(0, 2**32, (64, 1), dtype=np.uint32)
    pg = gallery.PackedGallery(range(n), g, 32)
    index = faiss.IndexBinaryFlat(32)
    index.add(g.view(np.uint8).reshape(n, 4))
    q = probes.view(np.uint8).reshape(64, 4)
    p = probes[0]
    row = {"n": n, "kernel": gallery.KERNEL}
    row["ms_project"] = best_ms(lambda: pg.search(p, 1))
    row["ms_faiss"] = best_ms(lambda: index.search(q[:1], 1))
    row["ms_floor"] = best_ms(lambda: g.max())
    row["ms_project_top5"] = best_ms(lambda: pg.search(p, 5))
    row["ms_faiss_top5"] = best_ms(lambda: index.search(q[:1], 5))
    row["ms_project_batch64"] = best_ms(lambda: pg.search_batch(probes, 1))
    row["ms_faiss_batch64"] = best_ms(lambda: index.search(q, 1))
    row["ms_project_batch64_top5"] = best_ms(lambda: pg.search_batch(probes, 5))
    row["ms_faiss_batch64_top5"] = best_ms(lambda: index.search(q, 5))
    for key in ("", "_top5", "_batch64", "_batch64_top5"):
        row[f"ratio{key}"] = round(row[f"ms_project{key}"] / row[f"ms_faiss{key}"], 3)
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}


def crossover(rng: np.random.Generator) -> dict:
    """Smallest gallery where the array path (C or numpy) beats Python ints (32-bit, top-1)."""
    times = {}
    for n in (1, 2, 4, 8, 12, 16, 24, 32, 64):
        g = rng.integers(0, 2**32, (n, 1), dtype=np.uint32)
        p = rng.integers(0, 2**32, 1, dtype=np.uint32)
        saved = gallery.INT_CROSSOVER
        try:
            gallery.INT_CROSSOVER = n + 1
            ints = gallery.PackedGallery(range(n), g, 32)
            gallery.INT_CROSSOVER = 0
            arrays = gallery.PackedGallery(range(n), g, 32)
        finally:
            gallery.INT_CROSSOVER = saved
        times[n] = (
            best_ms(lambda g=ints, p=p: g.search(p, 1)),
            best_ms(lambda g=arrays, p=p: g.search(p, 1)),
        )
    faster = [n for n, (ti, ta) in times.items() if ta < ti]
    return {
        "kernel": gallery.KERNEL,
        "crossover_n": min(faster) if faster else None,
        "configured": gallery.INT_CROSSOVER,
        "us_ints": {n: round(t[0] * 1e3, 3) for n, t in times.items()},
        "us_arrays": {n: round(t[1] * 1e3, 3) for n, t in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="include N = 1e7")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    sizes = [1, 10, 100, 1000, 10**4, 10**5, 10**6] + ([10**7] if args.full else [])
    for n in sizes:
        print(json.dumps(bench_size(n, rng, faiss)), flush=True)
    print(json.dumps(crossover(rng)), flush=True)


if __name__ == "__main__":
    main()
