"""torch Dataset over PalmArrays: augmentation on the uint8 ROI, then agent.preprocess."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

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
        self.epoch = 0

    @property
    def paired(self) -> bool:
        return self.arrays.vein is not None

    def set_epoch(self, epoch: int) -> None:
        """New augmentation draws each epoch, the same ones for the same (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def _tensor(self, img: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        if rng is not None:
            img = augment(img, rng, self.augment_cfg)
        return torch.from_numpy(preprocess(img, self.spec))

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        rng = None
        if self.augment_cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, row])
        label = int(self.arrays.labels[row])
        p = self._tensor(self.arrays.print[row], rng)
        if not self.paired:
            return p, label
        return p, self._tensor(self.arrays.vein[row], rng), label
