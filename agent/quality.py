"""Quality gate before hashing: a frame is hashed only if it can give a trustworthy code.

A bad capture that is hashed anyway costs a false reject at best and, with a lenient threshold,
a false accept; rejecting it with a named reason lets the daemon ask the user to try again and
tells an operator why (reasons go out over MQTT as they are named here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from agent.roi import RoiResult

REASONS = (
    "no_hand",
    "partial_hand",
    "fingers_not_found",
    "roi_too_small",
    "too_dark",
    "saturated",
    "blurred",
)


@dataclass(frozen=True)
class QualityThresholds:
    """Limits the daemon config fills; the defaults suit an 8-bit NIR frame and 128-px ROIs."""

    min_frame_p99: float = 40.0  # nothing in the frame is lit: the light or camera is off
    min_roi_side_px: float = 48.0  # ROI side in frame pixels; smaller is upsampled mush
    min_roi_mean: float = 50.0
    max_roi_mean: float = 235.0
    saturation_level: int = 250
    max_saturated_frac: float = 0.05
    min_laplacian_var: float = 6.0  # on the ROI at its output size; sensor noise counts too

    @classmethod
    def from_dict(cls, d: dict) -> QualityThresholds:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"quality thresholds: unknown key(s) {sorted(unknown)}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


@dataclass
class Verdict:
    ok: bool
    reason: str | None = None  # one of REASONS when not ok
    measures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def laplacian_var(img: np.ndarray) -> float:
    """Variance of the Laplacian: high for sharp creases, low once they are blurred away."""
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if grey.dtype == np.uint8:  # |Laplacian| <= 4 * 255 fits int16: no float64 image
        _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
        return float(std[0, 0]) ** 2
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def percentile_u8(img: np.ndarray, q: float) -> float:
    """``np.percentile(img, q)`` (linear interpolation) of a uint8 image, from its histogram:
    counting is a fraction of the cost of sorting, and the value is the same."""
    grey = np.ascontiguousarray(img)  # a strided sample is gathered once, for calcHist
    hist = cv2.calcHist([grey.reshape(1, -1)], [0], None, [256], [0, 256])
    cum = np.cumsum(hist.ravel().astype(np.int64))
    total = int(cum[-1])
    pos = q / 100 * (total - 1)
    lo = int(pos)
    v_lo, v_hi = np.searchsorted(cum, [lo + 1, min(lo + 2, total)])
    return float(v_lo + (pos - lo) * (v_hi - v_lo))


def assess(
    frame: np.ndarray, found: RoiResult, limits: QualityThresholds = QualityThresholds()
) -> Verdict:
    """Check a frame and what :func:`agent.roi.extract` found in it; the first failure wins.

    The order is from "nothing to see" to "not sharp enough", so the reason names the most
    basic thing the user has to fix.
    """
    # every 4th pixel each way: enough for a percentile, and 1/16 of the counting
    sample = frame[::4, ::4]
    p99 = percentile_u8(sample, 99) if sample.dtype == np.uint8 else np.percentile(sample, 99)
    m: dict[str, float] = {"frame_p99": float(p99)}
    if m["frame_p99"] < limits.min_frame_p99:
        return Verdict(False, "too_dark", m)
    if found.roi is None and found.reason == "no_hand":
        return Verdict(False, "no_hand", m)
    if found.touches_border:
        return Verdict(False, "partial_hand", m)
    if found.roi is None or found.square is None:
        return Verdict(False, found.reason or "fingers_not_found", m)
    m["roi_side_px"] = float(found.square.side)
    if m["roi_side_px"] < limits.min_roi_side_px:
        return Verdict(False, "roi_too_small", m)
    roi = found.roi
    # cv2.mean and a count: the same values as numpy's mean, a fifth of the time on a 128-px ROI
    m["roi_mean"] = cv2.mean(roi)[0] if roi.ndim == 2 else float(roi.mean())
    m["saturated_frac"] = np.count_nonzero(roi >= limits.saturation_level) / roi.size
    m["laplacian_var"] = laplacian_var(roi)
    if m["roi_mean"] < limits.min_roi_mean:
        return Verdict(False, "too_dark", m)
    if m["saturated_frac"] > limits.max_saturated_frac or m["roi_mean"] > limits.max_roi_mean:
        return Verdict(False, "saturated", m)
    if m["laplacian_var"] < limits.min_laplacian_var:
        return Verdict(False, "blurred", m)
    return Verdict(True, None, m)
