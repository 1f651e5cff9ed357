"""Full-hand frame -> palm ROI, rotation-normalised, with OpenCV only.

The palm coordinate frame comes from two finger valleys (index-middle and ring-little): they
sit on bone and web skin that barely move when the hand opens or tilts, unlike the palm's outline.

ROI convention (the synthetic hand generator computes its ground truth with the same function,
:func:`square_from_valleys`, from the valleys of its own geometry):

- ``d`` = distance between the two valleys; ``n`` = unit normal of the valley line pointing into
  the palm (away from the fingers); ``u`` = ``(n_y, -n_x)``, the ROI's x axis in frame pixels.
- side = ``SIDE_RATIO * d``; the ROI's top edge is ``GAP_RATIO * d`` below the valley line;
  centre = valley midpoint + ``n * (GAP_RATIO * d + side / 2)``.
- ``angle_deg`` = ``atan2(u_y, u_x)`` in degrees, in image coordinates (y down), so positive is
  clockwise on screen; 0 means fingers point straight up the frame.
- corners are top-left, top-right, bottom-right, bottom-left of the ROI image, in frame pixels.
  The cut ROI has the fingers up; a left hand is not mirrored unless asked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SIDE_RATIO = 1.25
GAP_RATIO = 0.25
_DISC5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # the refinement's opening


@dataclass(frozen=True)
class RoiSquare:
    """A rotated square in frame pixels (see the module docstring for the convention)."""

    centre: tuple[float, float]
    side: float
    angle_deg: float

    def corners(self) -> np.ndarray:
        # in Python floats: numpy's per-call cost on 2-vectors is most of this otherwise, and
        # it runs for every modality of every capture
        a = math.radians(self.angle_deg)
        ux, uy = math.cos(a), math.sin(a)
        (cx, cy), h = self.centre, self.side / 2
        hux, huy, hnx, hny = h * ux, h * uy, -h * uy, h * ux
        return np.array(
            [
                [cx - hux - hnx, cy - huy - hny],
                [cx + hux - hnx, cy + huy - hny],
                [cx + hux + hnx, cy + huy + hny],
                [cx - hux + hnx, cy - huy + hny],
            ]
        )

    def to_dict(self) -> dict:
        return {
            "centre": [float(v) for v in self.centre],
            "side": float(self.side),
            "angle_deg": float(self.angle_deg),
            "corners": self.corners().round(3).tolist(),
        }


def square_from_valleys(
    v_a: np.ndarray | tuple[float, float],
    v_b: np.ndarray | tuple[float, float],
    palm_point: np.ndarray | tuple[float, float],
    side_ratio: float = SIDE_RATIO,
    gap_ratio: float = GAP_RATIO,
) -> RoiSquare:
    """The ROI square from the two valleys and any point on the palm side of their line."""
    (ax, ay), (bx, by), (px, py) = (map(float, p) for p in (v_a, v_b, palm_point))
    lx, ly = bx - ax, by - ay
    d = math.hypot(lx, ly)
    nx, ny = -ly / d, lx / d
    mx, my = (ax + bx) / 2, (ay + by) / 2
    if (px - mx) * nx + (py - my) * ny < 0:
        nx, ny = -nx, -ny
    side = side_ratio * d
    reach = gap_ratio * d + side / 2
    angle = math.degrees(math.atan2(-nx, ny))  # of u = (n_y, -n_x)
    return RoiSquare((mx + nx * reach, my + ny * reach), side, angle)


def cut(frame: np.ndarray, square: RoiSquare, out_size: int = 128) -> np.ndarray:
    """Resample the square into an ``out_size`` image, fingers up."""
    src = square.corners()[:3].astype(np.float32)
    dst = np.float32([[0, 0], [out_size, 0], [out_size, out_size]])
    m = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(
        frame, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


@dataclass(frozen=True)
class RoiConfig:
    """How to find the palm; the daemon config fills it."""

    out_size: int = 128
    already_roi: bool = False  # data-set frames are ROIs already: skip the search
    min_hand_frac: float = 0.03  # hand area / frame area below which there is no hand
    min_valley_depth: float = 0.2  # convexity-defect depth / sqrt(hand area)
    min_contrast: float = 20.0  # grey levels between hand and background
    mirror_left: bool = False
    side_ratio: float = SIDE_RATIO
    gap_ratio: float = GAP_RATIO
    # the hand is segmented and its valleys found on a copy whose long side is at most this
    # (0: full resolution); the ROI is still cut from the full-resolution frame
    search_px: int = 320


@dataclass
class RoiResult:
    """What the search found; ``roi`` is None when it failed, and ``reason`` says why."""

    roi: np.ndarray | None = None
    square: RoiSquare | None = None
    reason: str | None = None
    hand: str | None = None  # "left" / "right" when the thumb valley was seen
    mask: np.ndarray | None = field(default=None, repr=False)  # at the search resolution
    valleys: np.ndarray | None = None  # (2, 2): index-middle / ring-little, in either order
    touches_border: bool = False
    hand_frac: float = 0.0


def segment(frame: np.ndarray, min_contrast: float = 20.0, kernel: int = 5) -> np.ndarray:
    """Lit hand on a dark background -> uint8 mask (255 = hand), Otsu on a smoothed frame.

    Otsu always splits, even an empty scene; when the two classes differ by less than
    ``min_contrast`` grey levels there is nothing lit in front of the camera. ``kernel`` is the
    smoothing and opening size in pixels of ``frame`` (5 suits a 640x480 frame).
    """
    return _segment(frame, min_contrast, kernel, smoothed=False)[0]


def _segment(
    frame: np.ndarray, min_contrast: float, kernel: int, smoothed: bool
) -> tuple[np.ndarray, float]:
    """(mask, Otsu level of the smoothed frame); the level is that of the full frame too, since
    averaging (by area or by a pyramid's Gaussian) keeps grey levels. ``smoothed``: the frame
    is a pyramid level, already smoothed on its way down."""
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    smooth = grey if smoothed else cv2.GaussianBlur(grey, (kernel, kernel), 0)
    level, mask = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # the class means from three SIMD sums: a histogram (calcHist) or indexing the frame with
    # the mask each cost more than Otsu itself
    n, n_fg = smooth.size, cv2.countNonZero(mask)
    if n_fg in (0, n):
        return np.zeros_like(mask), level
    total, fg = cv2.sumElems(smooth)[0], cv2.sumElems(cv2.bitwise_and(smooth, mask))[0]
    contrast = fg / n_fg - (total - fg) / (n - n_fg)
    if contrast < min_contrast:
        return np.zeros_like(mask), level
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, k), level


def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea) if contours else None


def find_valleys(
    contour: np.ndarray, min_depth_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(valley_a, valley_b, a fingertip, thumb valley or None) from the hand contour.

    The deep convexity defects, in contour order, are the gaps between fingers. The three
    between the four long fingers are nearly evenly spaced and nearly collinear; the
    thumb-index gap is further and lower, which is how a window of three is chosen.
    """
    if len(contour) < 8:
        return None
    hull = np.sort(cv2.convexHull(contour, returnPoints=False).reshape(-1))
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:
        return None
    if defects is None:
        return None
    pts = contour.reshape(-1, 2).astype(float)
    d = defects.reshape(-1, 4)
    d = d[d[:, 3] >= min_depth_px * 256]
    deep = sorted((f, s, e, depth / 256) for s, e, f, depth in d.tolist())
    if len(deep) < 3:
        return None
    # (x, y, depth) per defect in Python floats, fetched at once: the window scores below are
    # scalar arithmetic, where a numpy lookup per point would cost more than the score
    xy = pts[[t[0] for t in deep]].tolist()
    far = [(x, y, t[3]) for (x, y), t in zip(xy, deep, strict=True)]
    best, best_score = 0, math.inf
    m = len(deep)
    for i in range(m if m > 3 else 1):
        (x1, y1, d1), (x2, y2, d2), (x3, y3, d3) = (far[(i + k) % m] for k in range(3))
        span = math.hypot(x3 - x1, y3 - y1)
        g1, g2 = math.hypot(x2 - x1, y2 - y1), math.hypot(x3 - x2, y3 - y2)
        if min(g1, g2) <= 0 or span <= 0:
            continue
        cross = (x3 - x1) * (y2 - y1) - (y3 - y1) * (x2 - x1)
        dev = abs(cross) / span
        score = max(g1, g2) / min(g1, g2) + 2 * dev / span + max(d1, d2, d3) / min(d1, d2, d3) - 1
        if score < best_score:
            best, best_score = i, score
    if best_score > 3.0:  # also when no window had a score
        return None
    tri = [deep[(best + k) % m] for k in range(3)]
    neighbours = [deep[(best - 1) % m], deep[(best + 3) % m]] if m > 3 else []
    tip = pts[tri[1][1]]
    v_a, v_b = pts[tri[0][0]], pts[tri[2][0]]
    # The defect point is the farthest from the fingertip chord, which slides along the web when
    # neighbouring fingers differ in length. The valley is the web's deepest point into the palm.
    webs = [_arc(pts, t[1], t[2]) for t in (tri[0], tri[2])]
    for _ in range(2):
        nx, ny = _into_palm(v_a, v_b, tip)
        h = math.hypot(nx, ny)
        v_a, v_b = (_bottom(web, np.array([nx / h, ny / h])) for web in webs)
    # the thumb-index web: the deeper of the defects next to the window in contour order (a
    # notch at the wrist, when there is one, is shallower)
    thumb = pts[max(neighbours, key=lambda t: t[3])[0]] if neighbours else None
    return v_a, v_b, tip, thumb


def _refine(
    frame: np.ndarray, v_a: np.ndarray, v_b: np.ndarray, tip: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """The two valleys again, on the full-resolution hand outline near them.

    The reduced search places each valley to within one of its pixels; segmenting only the
    strip around the valley line at full resolution (a few percent of the frame) puts the
    web's bottom back to within a frame pixel, as a full-resolution search would.
    """
    # the crop's bounds in Python floats: numpy's per-call cost on 2-vectors is most of this
    (ax, ay), (bx, by) = v_a.tolist(), v_b.tolist()
    d = float(np.hypot(bx - ax, by - ay))
    r = max(4.0, 0.15 * d)  # how far a valley may move; well short of the palm's sides
    h, w = frame.shape[:2]
    x0, y0 = max(math.floor(min(ax, bx) - r - 5), 0), max(math.floor(min(ay, by) - r - 5), 0)
    x1, y1 = math.ceil(max(ax, bx) + r + 6), math.ceil(max(ay, by) + r + 6)
    crop = frame[y0 : min(y1, h), x0 : min(x1, w)]
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    _, mask = cv2.threshold(cv2.GaussianBlur(grey, (5, 5), 0), level, 255, cv2.THRESH_BINARY)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _DISC5)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
    if not contours:
        return v_a, v_b
    pts = np.concatenate(contours, dtype=float).reshape(-1, 2)
    near = [pts[np.hypot(pts[:, 0] - x, pts[:, 1] - y) <= r] for x, y in ((ax, ay), (bx, by))]
    if min(len(p) for p in near) == 0:
        return v_a, v_b
    for _ in range(2):
        nx, ny = _into_palm(v_a, v_b, tip)
        # libm's hypot (np.hypot): math.hypot may round the last bit differently, which would move
        # the refined valleys by as much
        h = np.hypot(nx, ny)
        v_a, v_b = (_bottom(p, np.array([nx / h, ny / h])) for p in near)
    return v_a, v_b


def _into_palm(v_a: np.ndarray, v_b: np.ndarray, tip: np.ndarray) -> tuple[float, float]:
    """A normal of the valley line (not unit length) pointing away from the fingertip, in Python
    floats: it runs four times a search, and numpy's per-call cost on 2-vectors would be most of
    it."""
    (ax, ay), (bx, by), (tx, ty) = v_a.tolist(), v_b.tolist(), tip.tolist()
    nx, ny = -(by - ay), bx - ax
    if (tx - (ax + bx) / 2) * nx + (ty - (ay + by) / 2) * ny > 0:
        return -nx, -ny
    return nx, ny


def _arc(pts: np.ndarray, start: int, end: int) -> np.ndarray:
    """The contour from index ``start`` to ``end``, across the contour's first point if need be."""
    return pts[start : end + 1] if start <= end else np.concatenate([pts[start:], pts[: end + 1]])


def _bottom(pts: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """The bottom of a web: the mean of the points within a pixel of the deepest along ``unit``.

    A web's bottom is flat for a few pixels, and a single argmax would wander along it with the
    noise. Sum / count is what ``mean`` computes, without its Python-level bookkeeping, on
    arrays of a few hundred points.
    """
    depth = pts @ unit
    sel = pts[depth >= depth.max() - 1.0]
    return sel.sum(axis=0) / len(sel)


def extract(frame: np.ndarray, config: RoiConfig = RoiConfig()) -> RoiResult:
    """Find the palm ROI in a full-hand frame (or pass a data-set ROI through)."""
    if config.already_roi:
        roi = frame if frame.shape[:2] == (config.out_size,) * 2 else _resize(frame, config)
        h, w = frame.shape[:2]
        return RoiResult(roi=roi, square=RoiSquare((w / 2, h / 2), float(min(h, w)), 0.0))
    search = _SearchCopy.of(frame, config.search_px)
    kernel = 5 if search.scale.min() > 0.75 else 3  # smoothing and opening, in copy pixels
    mask, level = _segment(search.image, config.min_contrast, kernel, search.smoothed)
    contour = _largest_contour(mask)
    h, w = mask.shape
    area = cv2.contourArea(contour) if contour is not None else 0.0
    result = RoiResult(mask=mask, hand_frac=area / (h * w))
    if contour is None or result.hand_frac < config.min_hand_frac:
        result.reason = "no_hand"
        return result
    x, y, bw, bh = cv2.boundingRect(contour)
    result.touches_border = x <= 0 or y <= 0 or x + bw >= w or y + bh >= h
    found = find_valleys(contour, config.min_valley_depth * math.sqrt(area))
    if found is None:
        result.reason = "fingers_not_found"
        logger.debug("roi fingers_not_found hand_frac=%.3f", result.hand_frac)
        return result
    v_a, v_b, tip, thumb = (search.to_frame(p) if p is not None else None for p in found)
    if search.scale.min() < 1:
        v_a, v_b = _refine(frame, v_a, v_b, tip, level)
    # in Python floats from here: numpy's per-call cost on 2-vectors is most of this otherwise
    (ax, ay), (bx, by), (tx, ty) = v_a.tolist(), v_b.tolist(), tip.tolist()
    mx, my = (ax + bx) / 2, (ay + by) / 2
    palm_point = (mx - (tx - mx), my - (ty - my))  # the palm lies opposite the fingertips
    sq = square_from_valleys((ax, ay), (bx, by), palm_point, config.side_ratio, config.gap_ratio)
    result.square, result.valleys = sq, np.array([v_a, v_b])
    if thumb is not None:
        (hx, hy), (cx, cy), a = thumb.tolist(), sq.centre, math.radians(sq.angle_deg)
        # palm towards the camera, fingers up: a right hand has its thumb on the right of u,
        # the ROI's x axis (cos a, sin a)
        result.hand = "right" if (hx - cx) * math.cos(a) + (hy - cy) * math.sin(a) > 0 else "left"
    result.roi = _cut_oriented(frame, result, config)
    return result


def recut(frame: np.ndarray, found: RoiResult, config: RoiConfig = RoiConfig()) -> RoiResult:
    """The ROI that ``found`` located in another frame of the same capture, cut from ``frame``.

    A camera whose modalities share one sensor (switched light) or a registered pair sees the
    hand at the same pixels in both frames, so one search serves both: the second search would
    find the same square and cost as much as a light model's inference.
    """
    if found.square is None or config.already_roi:
        return extract(frame, config)
    shared = RoiResult(
        square=found.square,
        hand=found.hand,
        valleys=found.valleys,
        touches_border=found.touches_border,
        hand_frac=found.hand_frac,
    )
    shared.roi = _cut_oriented(frame, shared, config)
    return shared


def _cut_oriented(frame: np.ndarray, found: RoiResult, config: RoiConfig) -> np.ndarray:
    assert found.square is not None
    roi = cut(frame, found.square, config.out_size)
    if config.mirror_left and found.hand == "left":
        roi = np.ascontiguousarray(roi[:, ::-1])
    return roi


@dataclass(frozen=True)
class _SearchCopy:
    """The frame reduced for the search, and how its pixels map back to the frame's.

    Segmentation and contour work scale with the pixel count, and the valleys found on the copy
    are put back to full-resolution accuracy by :func:`_refine`. Each exact halving is a pyramid
    step (``cv2.pyrDown``): it smooths as it shrinks, in one pass that costs less than the
    area resize alone, so the search needs no blur of its own on such a copy.
    """

    image: np.ndarray
    scale: np.ndarray  # (x, y): copy pixels per frame pixel
    shift: np.ndarray  # (x, y): a copy pixel p lies at frame pixel p / scale + shift
    smoothed: bool

    @classmethod
    def of(cls, frame: np.ndarray, search_px: int) -> _SearchCopy:
        """``frame`` reduced until its long side is at most ``search_px`` (0: not reduced)."""
        h, w = frame.shape[:2]
        if search_px <= 0 or max(h, w) <= search_px:
            return cls(frame, np.ones(2), np.zeros(2), smoothed=False)
        image, halvings = frame, 0
        while max(image.shape[:2]) >= 2 * search_px:
            # pixel p of a pyramid level is centred on pixel 2p of the level below
            image, halvings = cv2.pyrDown(image), halvings + 1
        pyramid = 2.0**halvings
        ih, iw = image.shape[:2]
        if max(ih, iw) <= search_px:
            return cls(image, np.full(2, 1 / pyramid), np.zeros(2), smoothed=True)
        f = search_px / max(ih, iw)
        size = (max(1, round(iw * f)), max(1, round(ih * f)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # area averaging: pixel q covers the level's pixels [q / a, (q + 1) / a)
        a = np.array([size[0] / iw, size[1] / ih])
        return cls(image, a / pyramid, (0.5 / a - 0.5) * pyramid, smoothed=halvings > 0)

    def to_frame(self, p: np.ndarray) -> np.ndarray:
        return p / self.scale + self.shift


def _resize(frame: np.ndarray, config: RoiConfig) -> np.ndarray:
    return cv2.resize(frame, (config.out_size, config.out_size), interpolation=cv2.INTER_AREA)
