"""Data sets: layouts on disk, arrays in memory, the reference split, the torch Dataset."""

from export.data.arrays import PalmArrays, from_synth, load_dataset
from export.data.dataset import EpochSampler, PalmDataset, epoch_seed, network_input, step_seed
from export.data.layouts import LAYOUTS, LayoutError, scan
from export.data.split import (
    dataset_arrays,
    images_digest,
    load_split,
    reference_split,
    rows_of,
    split_record,
)

__all__ = [
    "LAYOUTS",
    "EpochSampler",
    "LayoutError",
    "PalmArrays",
    "PalmDataset",
    "dataset_arrays",
    "epoch_seed",
    "from_synth",
    "images_digest",
    "load_dataset",
    "load_split",
    "network_input",
    "reference_split",
    "rows_of",
    "scan",
    "split_record",
    "step_seed",
]
