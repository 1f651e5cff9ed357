"""torch Dataset over PalmArrays: augmentation on the uint8 ROI, then agent.preprocess."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from agent.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess
from export.augment import AugmentConfig, augment
from export.data.arrays import PalmArrays


class PalmDataset(Dataset):
    """Yields (print, vein, label) for paired sets and (print, label) for print-only ones."""

    def __init__(
        self,
        arrays: PalmArrays,
        rows: np.ndarray | None = None,
        spec: PreprocessSpec = DEFAULT_SPEC,
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.arrays = arrays
        self.rows = np.arange(len(arrays)) if rows is None else np.asarray(rows)
        self.spec = spec
        self.augment_cfg = augment_cfg
        self.seed = seed

    @property
    def paired(self) -> bool:
        return self.arrays.vein is not None

    def __len__(self) -> int:
        return len(self.rows)

    def _tensor(self, img: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        if rng is not None:
            img = augment(img, rng, self.augment_cfg)
        return torch.from_numpy(preprocess(img, self.spec))

    def __getitem__(self, key: int | tuple[int, int]):
        """``key`` is (epoch, index) as :class:`EpochSampler` gives it, or an index (epoch 0):
        new augmentation draws each epoch, the same ones for the same (seed, epoch)."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        row = int(self.rows[i])
        rng = None
        if self.augment_cfg is not None:
            rng = np.random.default_rng([self.seed, epoch, row])
        label = int(self.arrays.labels[row])
        p = self._tensor(self.arrays.print[row], rng)
        if not self.paired:
            return p, label
        return p, self._tensor(self.arrays.vein[row], rng), label


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch's draws (the sample order, the cross-modal shuffle), so that
    a resumed run repeats them."""
    return seed * 1_000_003 + epoch


class EpochSampler(Sampler):
    """One epoch's indices as (epoch, index) keys, in an order seeded by (seed, epoch).

    Loader workers that live across epochs (``persistent_workers``, which spares a GPU run
    the start of every worker in every epoch) hold their own copy of the dataset, which a
    per-epoch setting on it would never reach; the epoch travels with each index instead, so a
    sample's augmentation stays a function of (seed, epoch, row) however the work is spread.
    ``inner`` is a ``RandomSampler`` with its own generator, or a ``DistributedSampler``.
    """

    def __init__(self, inner: Sampler, seed: int) -> None:
        self.inner, self.seed, self.epoch = inner, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if getattr(self.inner, "generator", None) is not None:
            self.inner.generator.manual_seed(epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.inner)
