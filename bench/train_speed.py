"""Training throughput: images per second through one optimiser step, per backbone, batch 32.

A step is what `palm-export train` does per batch: both sub-networks forward, the co-hash loss,
backward, RMSprop. One pair (print + vein) is two images. The data pipeline (augmentation +
agent.preprocess, per image, on the CPU) is timed separately, since loader workers overlap it.
Ratios are against the light backbone measured in the same run.

The loader: pairs per second through the training loader's workers, for an epoch of a few
batches (fewer than workers, as with the paper's data sets on a GPU machine), a batch built by
one worker (torch's DataLoader) against a batch cut into chunks built by all workers
(export.data.loader.ChunkedLoader), with float32 network inputs from the workers and with
uint8 images normalised afterwards (``chunked_uint8``: what training does, normalisation
included), in the same run.

    python bench/train_speed.py [--threads N] [--steps N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
import torch

from agent.preprocess import preprocess
from export.augment import augment
from export.centroids import make_centroids
from export.losses import cohash_loss
from export.model import PalmCohashNet


def step_rate(backbone: str, batch: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    model = PalmCohashNet(backbone, 32).to(device).train()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, weight_decay=1e-5)
    cent = torch.as_tensor(make_centroids(batch, 32), dtype=torch.float32, device=device)
    x = torch.randn(batch, 3, 128, 128, device=device)
    y = torch.arange(batch, device=device)

    def one() -> None:
        up, uv = model(x, x)
        loss, _ = cohash_loss(up, uv, y, cent)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * batch / float(np.median(times))


def pipeline_rate(n: int = 200) -> float:
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    t = time.perf_counter()
    for i in range(n):
        preprocess(augment(img, np.random.default_rng(i)))
    return n / (time.perf_counter() - t)


def loader_rates(
    workers: int, batch: int, batches: int, device: str, epochs: int = 3
) -> dict[str, float]:
    """Pairs per second over ``epochs`` epochs of ``batches`` batches, after one warm-up epoch
    that starts the persistent workers."""
    from torch.utils.data import DataLoader, RandomSampler

    from export.augment import AugmentConfig
    from export.data import EpochSampler, PalmDataset, from_synth, network_input
    from export.data.loader import ChunkedLoader
    from export.synth import generate_arrays

    cv2.setNumThreads(1)  # as training does: workers fork safely and augment on one thread
    ids = max(1, batch * batches // 4)
    arrays = from_synth(*generate_arrays(ids, 4, "easy", 0))
    out = {}
    for name in ("one_worker_per_batch", "chunked", "chunked_uint8"):
        ds = PalmDataset(arrays, augment_cfg=AugmentConfig(), normalised=name != "chunked_uint8")
        sampler = EpochSampler(RandomSampler(ds, generator=torch.Generator()), seed=0)
        if name.startswith("chunked"):
            loader = ChunkedLoader(ds, batch, sampler, workers)
        else:
            loader = DataLoader(
                ds, batch, sampler=sampler, num_workers=workers, persistent_workers=True
            )
        for _ in loader:  # warm-up: the workers start
            pass
        t = time.perf_counter()
        for epoch in range(1, epochs + 1):
            sampler.set_epoch(epoch)
            for item in loader:
                if not ds.normalised:
                    for images in item[:2]:
                        network_input(images.to(device))
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = epochs * len(ds) / (time.perf_counter() - t)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers")
    p.add_argument("--loader-batches", type=int, default=1, help="batches per loader epoch")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rates = {b: step_rate(b, a.batch, a.steps, a.device) for b in ("light", "res18")}
    for b, r in rates.items():
        print(
            json.dumps(
                {
                    "bench": "train_speed",
                    "backbone": b,
                    "batch": a.batch,
                    "device": a.device,
                    "threads": a.threads,
                    "images_per_s": round(r, 1),
                    "ratio_to_light": round(r / rates["light"], 3),
                }
            )
        )
    print(
        json.dumps(
            {
                "bench": "train_speed",
                "stage": "augment+preprocess",
                "threads": 1,
                "images_per_s": round(pipeline_rate(), 1),
            }
        )
    )
    if a.workers > 1:
        rates = loader_rates(a.workers, a.batch, a.loader_batches, a.device)
        base = rates["one_worker_per_batch"]
        for name, r in rates.items():
            row = {"bench": "train_speed", "stage": "loader", "loader": name}
            row |= {"workers": a.workers, "batch": a.batch, "batches": a.loader_batches}
            row |= {"pairs_per_s": round(r, 1), "ratio": round(r / base, 3)}
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
