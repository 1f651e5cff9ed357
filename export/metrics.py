"""Verification and identification error rates from distance scores (lower = more alike).

One implementation serves evaluation, threshold calibration for the bundle, the parity gate and
the benchmarks, so that every number in a report is computed the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_FMRS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class ErrorRates:
    eer: float
    eer_threshold: float
    fnmr_at_fmr: dict[str, float]  # key: the FMR as written, e.g. "0.001"
    threshold_at_fmr: dict[str, float]
    n_genuine: int
    n_impostor: int

    def to_dict(self) -> dict:
        return asdict(self)


def det_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, ...]:
    """Accept when distance <= t. Returns thresholds, FMR(t) and FNMR(t) over every distinct t."""
    g = np.sort(np.asarray(genuine, dtype=np.float64).ravel())
    i = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    if g.size == 0 or i.size == 0:
        raise ValueError("error rates need at least one genuine and one impostor score")
    t = np.unique(np.concatenate([g, i, [min(g[0], i[0]) - 1.0]]))
    fmr = np.searchsorted(i, t, side="right") / i.size
    fnmr = 1.0 - np.searchsorted(g, t, side="right") / g.size
    return t, fmr, fnmr


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float:
    """The largest accept-threshold whose false-match rate does not exceed ``fmr``.

    Where even the closest impostor is too many (fewer impostor pairs than 1/fmr), that is just
    below the closest impostor: one less on Hamming distances (integers, as the device's
    thresholds are), the next float below it on real-valued (cosine) distances, where one less
    would reject every genuine pair too.
    """
    i = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    below = i[0] - 1.0 if np.all(i == np.round(i)) else np.nextafter(i[0], -np.inf)
    t = np.unique(np.concatenate([i, [below]]))
    ok = np.searchsorted(i, t, side="right") / i.size <= fmr
    return float(t[ok][-1])


def error_rates(
    genuine: np.ndarray, impostor: np.ndarray, fmrs: tuple[float, ...] = DEFAULT_FMRS
) -> ErrorRates:
    """EER (mean of FMR and FNMR where they cross) and FNMR at fixed FMRs."""
    t, fmr, fnmr = det_curve(genuine, impostor)
    k = int(np.argmin(np.abs(fmr - fnmr)))
    eer = float((fmr[k] + fnmr[k]) / 2.0)
    g = np.sort(np.asarray(genuine, dtype=np.float64).ravel())
    fnmr_at, thr_at = {}, {}
    for target in fmrs:
        thr = threshold_at_fmr(impostor, target)
        thr_at[repr(target)] = thr
        fnmr_at[repr(target)] = float(1.0 - np.searchsorted(g, thr, side="right") / g.size)
    return ErrorRates(eer, float(t[k]), fnmr_at, thr_at, int(g.size), int(np.size(impostor)))


def rank1(distances: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray) -> float:
    """Closed-set rank-1 identification rate; ties are broken against the probe (pessimistic)."""
    d = np.asarray(distances, dtype=np.float64)
    same = np.asarray(probe_ids)[:, None] == np.asarray(gallery_ids)[None, :]
    best_genuine = np.where(same, d, np.inf).min(axis=1)
    best_impostor = np.where(same, np.inf, d).min(axis=1)
    return float(np.mean(best_genuine < best_impostor))


def pair_scores(
    distances: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray, symmetric: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Split a probe×gallery distance matrix into genuine and impostor scores (all pairs).

    ``symmetric`` is for a set matched against itself: only pairs above the diagonal are used,
    so that no sample is compared with itself and no pair counts twice.
    """
    d = np.asarray(distances)
    same = np.asarray(probe_ids)[:, None] == np.asarray(gallery_ids)[None, :]
    keep = np.ones_like(same, dtype=bool)
    if symmetric:
        keep = np.triu(keep, k=1)
    return d[same & keep], d[~same & keep]
