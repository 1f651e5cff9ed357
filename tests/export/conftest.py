"""Helpers shared by the export tests: a synthetic split and checkpoints made on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def synth_split(ids: int = 3, samples: int = 4) -> tuple[Any, np.ndarray, np.ndarray, dict]:
    """(arrays, train rows, test rows, checkpoint metadata) of a small easy synthetic set and
    its reference split: the metadata names the set and the split, so ``load_split`` on a
    checkpoint saved with it finds the same images again."""
    from agent.preprocess import DEFAULT_SPEC
    from export.data.arrays import from_synth
    from export.data.split import reference_split, split_record
    from export.synth import generate_arrays

    arrays = from_synth(*generate_arrays(ids, samples, "easy", 0))
    train, test = reference_split(arrays, 0)
    meta = {
        "labels": arrays.identities,
        "preprocess": DEFAULT_SPEC.to_dict(),
        "split": {"train": split_record(arrays, train), "test": split_record(arrays, test)},
        "dataset": {
            "ds": "synth",
            "synth": {"ids": ids, "samples": samples, "level": "easy", "seed": 0},
        },
    }
    return arrays, train, test, meta


def untrained_checkpoint(
    path: Path, ids: int = 3, bits: int = 32, samples: int = 4, seed: int = 0
) -> Path:
    """A tiny untrained net (weights drawn with ``seed``) on :func:`synth_split`'s set: enough
    for what export checks first, and for digests that need weights, not skill."""
    import torch

    from export.centroids import make_centroids
    from export.checkpoint import save_checkpoint
    from export.model import create_model

    meta = synth_split(ids, samples)[3]
    torch.manual_seed(seed)
    model = create_model("tiny", bits).eval()
    return save_checkpoint(path, model, make_centroids(ids, bits, 0), meta)
