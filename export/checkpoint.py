"""The training checkpoint: what the exporter, the evaluator and --resume read back.

One dict saved with torch.save: "arch", "state_dict", "centroids" (int8 ±1, row = label index),
"labels", "preprocess" (PreprocessSpec.to_dict()), "split", "dataset", "train", "eval", "loss",
and for --resume "optimizer" (no RNG state is needed: every random draw of an epoch is seeded from
--seed, the epoch number and the step). "train" holds the epochs done, and after an interrupt
during an epoch's steps "in_epoch": the samples of its order trained on, its steps and the sums
of their loss terms. Everything but the tensors is plain JSON-able data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.model import PalmCohashNet
from export.text import first_few


class CheckpointError(ValueError):
    """A checkpoint that is missing, is not one, or does not fit what it is used for: the
    command line reports it in one line, with what to do."""


REQUIRED = ("arch", "state_dict", "centroids", "labels", "preprocess", "split", "dataset")


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the bare PalmCohashNet, whether or not it is wrapped in DDP."""
    bare = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu() for k, v in bare.state_dict().items()}


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, centroids: np.ndarray, meta: dict[str, Any]
) -> Path:
    """Write atomically (temp file + rename) so an interrupt never leaves half a checkpoint."""
    bare = model.module if hasattr(model, "module") else model
    ckpt = {
        **meta,
        "arch": bare.arch(),
        "state_dict": _plain_state(model),
        "centroids": torch.as_tensor(np.asarray(centroids), dtype=torch.int8),
    }
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[PalmCohashNet, dict]:
    """(model in eval mode, the checkpoint dict); centroids come back as an int8 numpy array."""
    path = Path(path)
    if path.is_dir():  # the run's folder, given for the file in it
        inside = sorted(p.name for p in path.glob("*.pt"))
        which = (
            f"pass one of the checkpoints in it: {first_few(str(path / n) for n in inside)}"
            if inside
            else "it holds no .pt file; pass the best.pt or last.pt of a `palm-export train` run"
        )
        raise CheckpointError(f"checkpoint {path} is a folder; {which}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with `palm-export train`")
    try:
        # on the CPU first: the model and the optimizer state are moved to the device after
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except OSError:
        raise
    except Exception as exc:  # torch names no one error: zip, pickle, EOF, tensor errors
        # a copy cut short, an empty file, another program's file under a .pt name
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}): a copy cut short or "
            "another kind of file; copy it again, or use best.pt or last.pt of the run"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} is not a palm-cohash checkpoint (it holds a {type(ckpt).__name__}, not "
            "the dict `palm-export train` writes)"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a palm-cohash checkpoint (missing {missing})")
    arch = ckpt["arch"]
    model = PalmCohashNet(arch["backbone"], arch["bits"], arch["in_channels"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # e.g. trained before the backbone's layers changed
        raise CheckpointError(
            f"{path}: its weights do not fit the current {arch['backbone']!r} backbone (it was "
            f"trained with an earlier version of it); retrain it (the demo: --fresh). {exc}"
        ) from exc
    model.to(device).eval()
    ckpt["centroids"] = np.asarray(ckpt["centroids"].cpu().numpy(), dtype=np.int8)
    return model, ckpt
