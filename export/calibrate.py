"""Calibration: which images set the int8 ranges, and which distances become the thresholds.

Two different calibrations, on two different splits, on purpose:
- int8 activation ranges come from a seeded sample of the TRAINING split (never the test split,
  or the parity numbers would be measured on the data the model was fitted to);
- accept thresholds per mode come from the TEST split's genuine/impostor distances, at the FMRs
  the device offers (1%, 0.1%, 0.01%) and at the EER point.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.preprocess import PreprocessSpec, preprocess

logger = logging.getLogger(__name__)


def calibration_tensors(
    train_rois: Sequence[np.ndarray] | np.ndarray, spec: PreprocessSpec, n: int, seed: int = 0
) -> np.ndarray:
    """A seeded sample of ``n`` training ROIs -> float32 (n, C, S, S), preprocessed as on device."""
    total = len(train_rois)
    if total == 0:
        raise ValueError("calibration needs training images; the training split is empty")
    if n < 1:
        raise ValueError(f"--calib must be >= 1, got {n}")
    take = np.random.default_rng(seed).choice(total, size=min(n, total), replace=False)
    if n > total:
        logger.warning("calib_requested=%d calib_available=%d using=all", n, total)
    return np.stack([preprocess(train_rois[int(i)], spec) for i in np.sort(take)])


def thresholds(modes: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per mode: accept threshold (distance <= t) at each FMR and at the EER point.

    ``modes`` maps a mode name to an ``export.metrics.ErrorRates`` (or its dict form).
    """
    out: dict[str, dict[str, float]] = {}
    for mode, rates in modes.items():
        r = rates.to_dict() if hasattr(rates, "to_dict") else dict(rates)
        row = {k: float(v) for k, v in r["threshold_at_fmr"].items()}
        row["eer"] = float(r["eer_threshold"])
        out[mode] = row
    return out
