"""torch Dataset over PalmArrays: augmentation on the uint8 ROI, then agent.preprocess.

Training on a GPU asks for uint8 items and normalises each batch there (:func:`network_input`):
the loader's workers then send a quarter of the bytes (49 KB an image instead of 196 KB), and
the result is bit for bit what :func:`agent.preprocess.preprocess` gives, since both read the
same per-grey-level table.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from agent.preprocess import DEFAULT_SPEC, PreprocessSpec, lookup, preprocess, to_channels
from export.augment import AugmentConfig, augment
from export.data.arrays import PalmArrays


class PalmDataset(Dataset):
    """Yields (print, vein, label) for paired sets and (print, label) for print-only ones.

    Images are float32 (C, S, S) network inputs, or with ``normalised=False`` uint8 (S, S, C)
    images for :func:`network_input`.
    """

    def __init__(
        self,
        arrays: PalmArrays,
        rows: np.ndarray | None = None,
        spec: PreprocessSpec = DEFAULT_SPEC,
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
        normalised: bool = True,
    ) -> None:
        self.arrays = arrays
        self.normalised = normalised
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
        if not self.normalised:
            # a copy where the image is still the data set's own read-only array
            return torch.from_numpy(np.require(to_channels(img, self.spec), requirements="WC"))
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


def network_input(images: torch.Tensor, spec: PreprocessSpec = DEFAULT_SPEC) -> torch.Tensor:
    """uint8 (N, S, S, C) -> float32 (N, C, S, S) on the images' device, as
    :func:`agent.preprocess.normalise` computes it: one lookup in the same table."""
    table = _table(spec, images.device)
    offsets = torch.arange(spec.channels, device=images.device).view(1, -1, 1, 1) * 256
    return table[images.permute(0, 3, 1, 2).long() + offsets]


@functools.lru_cache(maxsize=8)
def _table(spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    return torch.tensor(lookup(spec)).reshape(-1).to(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch's sample order, so that a resumed run repeats it."""
    return seed * 1_000_003 + epoch


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The torch seed of one training step's cross-modal shuffle: drawn from one generator for
    the whole epoch, a run resumed in the middle of it could not draw what the rest would
    have. Hashed into torch's seed range (below 2**63): ``epoch_seed * 1_000_003 + step``
    passed it for seeds from about 1.8e7 (a date such as 20240101)."""
    key = f"{seed}/{epoch}/{step}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class EpochSampler(Sampler):
    """One epoch's indices as (epoch, index) keys, in an order seeded by (seed, epoch).

    Loader workers that live across epochs (``persistent_workers``, which spares a GPU run
    the start of every worker in every epoch) hold their own copy of the dataset, which a
    per-epoch setting on it would never reach; the epoch travels with each index instead, so a
    sample's augmentation stays a function of (seed, epoch, row) however the work is spread.
    ``inner`` is a ``RandomSampler`` with its own generator, or a ``DistributedSampler``.
    """

    def __init__(self, inner: Sampler, seed: int) -> None:
        self.inner, self.seed, self.epoch, self.skip = inner, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """``skip``: the first indices of the epoch's order, trained on before an interrupt, that
        a resumed run leaves out."""
        self.epoch, self.skip = epoch, skip
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if getattr(self.inner, "generator", None) is not None:
            self.inner.generator.manual_seed(epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in itertools.islice(self.inner, self.skip, None))
