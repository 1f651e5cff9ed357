"""Training batches built by all loader workers at once.

A DataLoader worker builds a whole batch by itself, and an epoch of the paper's data sets is a
handful of 256-pair batches: with more workers than batches in flight, most workers sit idle
while the GPU waits for the few that work (one H100 was busy 6% of the time with 12 workers on a
CASIA-M sized set). Here each batch is cut into chunks that different workers build at the same
time, and the chunks are put back together in order, so a batch holds the same samples, the same
augmentation and the same order as a plain loader's, tensor for tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def chunks_per_batch(batch_size: int, workers: int) -> int:
    """The most chunks, at most one per worker, that split a batch into equal parts (equal, so
    that chunk boundaries never straddle two batches)."""
    top = max(1, min(workers, batch_size))
    return max(d for d in range(1, top + 1) if batch_size % d == 0)


class ChunkedLoader:
    """Batches of ``batch_size`` from ``sampler``'s order, each built by up to ``workers``
    workers; the workers live for the whole run (``persistent_workers``)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: Sampler,
        workers: int,
        pin_memory: bool = False,
    ) -> None:
        self.batch_size, self.sampler, self.pin_memory = batch_size, sampler, pin_memory
        self.parts = chunks_per_batch(batch_size, workers)
        if workers > 0:
            # a forked worker inherits OpenCV's thread pool but not its threads, and its first
            # parallel call (warpPerspective, in augmentation) waits for them for ever; the pool
            # is stopped here, while its threads exist, and workers augment on one thread each:
            # the workers are the parallelism
            cv2.setNumThreads(1)
        self.loader = DataLoader(
            dataset,
            batch_size // self.parts,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        held: list[Sequence[torch.Tensor]] = []
        for chunk in self.loader:
            held.append(chunk)
            if len(held) == self.parts:
                yield self._join(held)
                held = []
        if held:  # the epoch's last, short batch
            yield self._join(held)

    def _join(self, chunks: list[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        out = []
        for parts in zip(*chunks, strict=True):
            shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
            # straight into page-locked memory when the batch goes to a GPU, so that the copy
            # to the device can overlap the previous step
            buf = torch.empty(shape, dtype=parts[0].dtype, pin_memory=self.pin_memory)
            out.append(torch.cat(parts, out=buf))
        return out
