"""How many people a K-bit code can tell apart: false-match rates in closed form.

Two unrelated palms give codes whose bits agree by chance, so their Hamming distance follows
Binomial(K, 1/2). A threshold t (accept when distance <= t) therefore has a false-match rate per
comparison FMR(t) = P[Binomial(K, 1/2) <= t], and a 1:N search against N unrelated templates
falsely finds someone with FPIR(N, t) = 1 - (1 - FMR)^N. Trained codes are not perfectly
uniform, so these numbers are the best case; a bundle's calibrated thresholds may be stricter.

Fused modes combine c independent comparisons: "mean" fusion accepts when the summed distance is
<= c*t (a Binomial(c*K, 1/2) tail), "both" needs every comparison to pass (FMR(t)^c).
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

DEFAULT_TARGET_FPIR = 0.01


def binomial_cdf(n: int, x: int) -> float:
    """P[Binomial(n, 1/2) <= x], exact via integer sums (no scipy on the device)."""
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    return math.fsum(math.comb(n, i) for i in range(x + 1)) / 2.0**n


def fmr(bits: int, threshold: float, comparisons: int = 1, rule: str = "mean") -> float:
    """False-match rate of one decision at ``threshold`` bits (per comparison, for "both")."""
    if comparisons == 1 or rule == "mean":
        return binomial_cdf(comparisons * bits, math.floor(comparisons * threshold + 1e-9))
    if rule == "both":
        return binomial_cdf(bits, math.floor(threshold + 1e-9)) ** comparisons
    raise ValueError(f"unknown fusion rule {rule!r}; use 'mean' or 'both'")


def fpir(bits: int, threshold: float, gallery_size: int, comparisons: int = 1, rule: str = "mean"):
    """False-positive identification rate of a 1:N search over ``gallery_size`` templates."""
    p = fmr(bits, threshold, comparisons, rule)
    # 1 - (1 - p)^N loses every digit when p is tiny; log1p/expm1 keep them.
    return -math.expm1(gallery_size * math.log1p(-p)) if p < 1.0 else 1.0


def threshold_for_fmr(
    bits: int, target_fmr: float, comparisons: int = 1, rule: str = "mean"
) -> float | None:
    """Largest threshold (bits; a multiple of 1/c for mean fusion) with FMR <= target, or None."""
    step = comparisons if rule == "mean" else 1
    best = None
    for s in range(comparisons * bits + 1 if rule == "mean" else bits + 1):
        t = s / step
        if fmr(bits, t, comparisons, rule) > target_fmr:
            break
        best = t
    return best


def largest_threshold(bits: int, gallery_size: int, target_fpir: float = DEFAULT_TARGET_FPIR):
    """Largest integer t with FPIR(gallery_size, t) <= target, or None if even t=0 is too loose."""
    best = None
    for t in range(bits + 1):
        if fpir(bits, t, gallery_size) > target_fpir:
            break
        best = t
    return best


def table(bits: int, gallery_size: int, max_threshold: int | None = None) -> list[dict]:
    """Rows (t, FMR per comparison, FPIR at gallery_size) up to where FPIR is essentially 1."""
    rows = []
    top = bits // 2 if max_threshold is None else max_threshold
    for t in range(top + 1):
        rows.append(
            {"t": t, "fmr": fmr(bits, t), "fpir": fpir(bits, t, gallery_size), "n": gallery_size}
        )
        if max_threshold is None and rows[-1]["fpir"] > 0.999:
            break
    return rows


def check(
    bits: int, gallery_size: int, threshold: float, target_fpir: float = DEFAULT_TARGET_FPIR
) -> bool:
    """Warn (and return False) when a 1:N threshold is too loose for the enrolled gallery size."""
    safe = largest_threshold(bits, gallery_size, target_fpir)
    if safe is not None and threshold <= safe:
        return True
    logger.warning(
        "capacity_exceeded bits=%d gallery=%d threshold=%s largest_safe=%s fpir=%.4g "
        "target_fpir=%g; use 1:1 verification, a lower threshold or longer codes",
        bits,
        gallery_size,
        threshold,
        safe,
        fpir(bits, threshold, gallery_size),
        target_fpir,
    )
    return False
