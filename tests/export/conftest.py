"""Helpers shared by the export tests."""

from __future__ import annotations

from pathlib import Path


def untrained_checkpoint(path: Path, ids: int = 3, bits: int = 32) -> Path:
    """A tiny untrained net on a small synthetic set: enough for what export checks first."""
    import numpy as np

    from agent.preprocess import DEFAULT_SPEC
    from export.centroids import make_centroids
    from export.checkpoint import save_checkpoint
    from export.data.arrays import from_synth
    from export.data.split import reference_split, split_record
    from export.model import create_model
    from export.synth import generate_arrays

    arrays = from_synth(*generate_arrays(ids, 4, "easy", 0))
    train, test = reference_split(arrays, 0)
    meta = {
        "labels": arrays.identities,
        "preprocess": DEFAULT_SPEC.to_dict(),
        "split": {"train": split_record(arrays, train), "test": split_record(arrays, test)},
        "dataset": {"ds": "synth", "synth": {"ids": ids, "samples": 4, "level": "easy", "seed": 0}},
    }
    model = create_model("tiny", bits).eval()
    return save_checkpoint(path, model, np.asarray(make_centroids(ids, bits, 0)), meta)
