"""The reference split and its record: a seeded half of each identity's samples trains.

Closed set: every identity is in both parts. The split is stored in the checkpoint as explicit
(identity -> sample keys) lists, not only as a seed, so the exporter gets exactly the images the
network was trained and tested on even if the data set folder later gains files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from agent.preprocess import PreprocessSpec
from export.data.arrays import PalmArrays, from_synth, load_dataset
from export.data.layouts import LayoutError
from export.text import first_few

logger = logging.getLogger(__name__)


def reference_split(arrays: PalmArrays, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): per identity, ceil(n/2) samples train and the rest test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(len(arrays.identities)):
        rows = np.flatnonzero(arrays.labels == label)
        rows = rows[np.argsort(arrays.samples[rows], kind="stable")]
        if len(rows) < 2:
            # all at once: a download with several such identities is fixed in one go
            single = [n for i, n in enumerate(arrays.identities) if np.sum(arrays.labels == i) < 2]
            raise LayoutError(
                f"{len(single)} identit(y/ies) with a single capture ({first_few(single, 10)}"
                "): the reference split trains on half of each identity's captures and "
                "tests on the other half, so each needs at least 2. Add captures of them, or "
                "delete their files (every band and the vein) to train on the others"
            )
        rows = rows[rng.permutation(len(rows))]
        k = (len(rows) + 1) // 2
        train.append(np.sort(rows[:k]))
        test.append(np.sort(rows[k:]))
    if len(test) < 2 or max(len(t) for t in test) < 2:
        # found now, not at the first evaluation after the training time was spent
        raise LayoutError(
            f"{len(test)} identities with at most {max(len(t) for t in test)} test sample(s) "
            "each: matching within a modality needs an identity with 2 test samples (4 in all: "
            "half of each identity's samples train) and impostor pairs need 2 identities"
        )
    return np.concatenate(train), np.concatenate(test)


def split_record(arrays: PalmArrays, rows: np.ndarray) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(arrays.identities[arrays.labels[r]], []).append(int(arrays.samples[r]))
    return out


def images_digest(arrays: PalmArrays) -> str:
    """sha256 of the decoded images in row order: the split record names the samples, this says
    whether a data set found later under the same names holds the same pictures (a regenerated
    synthetic set, another download)."""
    h = hashlib.sha256()
    for images in (arrays.print, arrays.vein):
        if images is not None:
            h.update(repr(images.shape).encode())
            h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def rows_of(arrays: PalmArrays, record: dict[str, list[int]]) -> np.ndarray:
    wanted = {(name, s) for name, samples in record.items() for s in samples}
    keys = zip((arrays.identities[i] for i in arrays.labels), arrays.samples.tolist(), strict=True)
    rows = np.array([i for i, k in enumerate(keys) if k in wanted], dtype=np.int64)
    if len(rows) != len(wanted):
        raise LayoutError(
            f"the data set holds {len(rows)} of the {len(wanted)} split samples recorded in the "
            "checkpoint; is --data-root the data set it was trained on?"
        )
    return rows


def dataset_arrays(dataset: dict[str, Any], spec: PreprocessSpec, root: str | Path | None = None):
    """Rebuild a checkpoint's data set: its layout on disk, or the synthetic set it was."""
    if dataset["ds"] == "synth":
        from export.synth import generate_arrays

        s = dataset["synth"]
        p, v = generate_arrays(
            s["ids"], s["samples"], s["level"], s["seed"], print_bands=s.get("print_bands", 1)
        )
        return from_synth(p, v)
    root = root or dataset.get("root") or os.environ.get("PALM_DATA", "./data")
    return load_dataset(dataset["ds"], root, spec)


def load_split(
    ckpt: dict[str, Any], part: str = "test", root: str | Path | None = None
) -> PalmArrays:
    """The train or test images of a checkpoint (uint8, label order = ckpt["labels"]).

    ``root`` overrides the recorded data root. Feed an image to the network with
    ``agent.preprocess.preprocess(img, PreprocessSpec.from_dict(ckpt["preprocess"]))``.
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    arrays = dataset_arrays(ckpt["dataset"], spec, root)
    if arrays.identities != list(ckpt["labels"]):
        ds = ckpt["dataset"]
        where = root or ds.get("root") or "the synthetic set"
        raise LayoutError(
            f"the {ds['ds']} data set at {where} holds {len(arrays.identities)} identities "
            f"({first_few(arrays.identities, 3)}), not the {len(ckpt['labels'])} the "
            f"checkpoint was trained on ({first_few(ckpt['labels'], 3)}); point "
            "--data-root (and --ds) at the data set it was trained on"
        )
    found = arrays.subset(rows_of(arrays, ckpt["split"][part]))
    recorded = ckpt["split"].get("images_sha256", {}).get(part)
    if recorded is not None and images_digest(found) != recorded:
        # a warning, not a refusal: another build of the image decoder may read a JPEG a few
        # grey levels apart, and then the data set is still the right one
        logger.warning(
            "the %s images found under the checkpoint's sample names differ from those it was "
            "trained with (another copy or version of the data set, or another image decoder): "
            "what is computed from them (calibration, parity, thresholds) describes these "
            "images; point --data-root at the data set it was trained on",
            part,
        )
    return found
