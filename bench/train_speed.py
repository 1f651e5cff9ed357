"""Training throughput: images per second through one optimiser step, per backbone, batch 32.

A step is what `palm-export train` does per batch: both sub-networks forward, the co-hash loss,
backward, RMSprop. One pair (print + vein) is two images. The data pipeline (augmentation +
agent.preprocess, per image, on the CPU) is timed separately, since loader workers overlap it.
Ratios are against the light backbone measured in the same run.

    python bench/train_speed.py [--threads N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
