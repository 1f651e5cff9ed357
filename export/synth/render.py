"""One capture of a hand: a print ROI and a vein ROI seen under one shared pose.

The creases and the vessels are drawn in the canonical palm frame onto one 3-channel canvas
(print lines, skin texture, vessels) and warped into the ROI by ONE remap, so the print and the
vein of a capture can never disagree on rotation, shift, scale or elastic warp. Photometry
(illumination, vignetting, blur, noise, JPEG) is then drawn per modality and per print band.

Random streams are seeded per (seed, identity, sample, purpose), so a capture does not depend on
which other captures were rendered, in which order or process, nor on the ROI size or the number
of print bands asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from export.synth.identity import MARGIN, Identity, bezier
from export.synth.levels import Level, get_level

REFERENCE_SIZE = 128  # widths, radii and blur in the levels are pixels at this ROI size
_SUBPIXEL_BITS = 4
_PRINCIPAL_PIECES = 6

# How each print band sees the same skin: crease and texture contrast, how much of the vessels
# shows through (longer wavelengths reach deeper), and the mean brightness.
BAND_PROFILES: dict[str, dict[str, float]] = {
    "grey": {"crease": 1.0, "wrinkle": 1.0, "vein_leak": 0.0, "base": 180.0},
    "red": {"crease": 0.65, "wrinkle": 0.5, "vein_leak": 0.35, "base": 200.0},
    "green": {"crease": 1.0, "wrinkle": 0.9, "vein_leak": 0.05, "base": 160.0},
    "blue": {"crease": 1.15, "wrinkle": 1.25, "vein_leak": 0.0, "base": 130.0},
    "nir700": {"crease": 0.55, "wrinkle": 0.4, "vein_leak": 0.45, "base": 190.0},
    "blue460": {"crease": 1.1, "wrinkle": 1.2, "vein_leak": 0.0, "base": 125.0},
}
DEFAULT_BANDS = {1: ("grey",), 3: ("red", "green", "blue")}
VEIN_BASE = 150.0
VEIN_CREASE_LEAK = 0.05  # principal creases stay faintly visible under 850 nm


@dataclass
class Capture:
    print_roi: np.ndarray  # uint8 (size, size) or (size, size, bands)
    vein_roi: np.ndarray  # uint8 (size, size)
    pose: dict
    # the geometric patterns before photometry, 0..1 darkness, for tests and the hand renderer
    print_pattern: np.ndarray = field(repr=False)
    vein_pattern: np.ndarray = field(repr=False)


def _rng(seed: int, identity: Identity, sample_index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, identity.index, sample_index, purpose])


def _sym(rng: np.random.Generator, m: float, n: int | tuple | None = None) -> np.ndarray | float:
    return rng.uniform(-m, m, n)


def _draw_pose(rng: np.random.Generator, lv: Level) -> dict:
    return {
        "rotation_deg": float(_sym(rng, lv.rotation_deg)),
        "shift_xy": [float(v) for v in _sym(rng, lv.shift_frac, 2)],
        "scale": float(1.0 + _sym(rng, lv.scale_frac)),
        "elastic_px": float(rng.uniform(*lv.elastic_px)),
    }


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a size×size ROI in normalised coordinates."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


@lru_cache(maxsize=8)
def _radius2(size: int) -> np.ndarray:
    x, y = _grid(size)
    return (x - 0.5) ** 2 + (y - 0.5) ** 2


def pose_matrix(pose: dict) -> np.ndarray:
    """2×3 affine of a pose: canonical palm coordinates -> normalised ROI coordinates (the
    elastic warp, a few pixels at most, left out). For pixels of a size-S ROI: p·S − 0.5."""
    t = np.deg2rad(pose["rotation_deg"])
    s = pose["scale"]
    rot = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    centre = np.array([0.5, 0.5])
    return np.hstack([rot, (centre - rot @ centre + np.asarray(pose["shift_xy"]))[:, None]])


def _pose_maps(pose: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """remap() tables: ROI pixel -> canvas pixel, through elastic warp, shift, scale, rotation.

    The hand sits in the image at ``p = c + s·R(θ)·(q − c) + shift`` (q canonical, c the centre);
    the tables hold the inverse, after a smooth random displacement of p of ``elastic_px``.
    """
    x, y = _grid(size)
    coarse = rng.standard_normal((5, 5, 2), dtype=np.float32)
    amp = pose["elastic_px"] / REFERENCE_SIZE
    field_ = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    dx, dy = field_[..., 0], field_[..., 1]
    peak = max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    px = x + dx * (amp / peak) - 0.5 - pose["shift_xy"][0]
    py = y + dy * (amp / peak) - 0.5 - pose["shift_xy"][1]
    t = np.deg2rad(pose["rotation_deg"])
    cos, sin, s = np.cos(t), np.sin(t), pose["scale"]
    qx = (cos * px + sin * py) / s + 0.5
    qy = (-sin * px + cos * py) / s + 0.5
    # the canvas covers [-MARGIN, 1 + MARGIN] at the ROI's own pixel pitch
    return (
        ((qx + MARGIN) * size - 0.5).astype(np.float32),
        ((qy + MARGIN) * size - 0.5).astype(np.float32),
    )


def _to_canvas(points: np.ndarray, size: int) -> np.ndarray:
    """Canonical coordinates -> fixed-point canvas pixels for cv2's subpixel drawing."""
    px = (points + MARGIN) * size - 0.5
    return np.round(px * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _draw_print(
    img: np.ndarray, tex: np.ndarray, ident: Identity, rng: np.random.Generator, lv: Level
) -> None:
    size = round(img.shape[0] / (1 + 2 * MARGIN))
    k = size / REFERENCE_SIZE
    aa, sh = cv2.LINE_AA, _SUBPIXEL_BITS
    # secondary creases first: the principal ones are drawn over them
    keep = rng.random(len(ident.secondary_ctrl)) >= lv.secondary_drop
    width = ident.secondary_width * (1 + _sym(rng, lv.width_jitter, len(keep)))
    dark = ident.secondary_dark * (1 + _sym(rng, lv.darkness_jitter, len(keep)))
    curves = _to_canvas(bezier(ident.secondary_ctrl, 12), size)
    for c, w, d in zip(curves[keep], width[keep], dark[keep], strict=True):
        cv2.polylines(img, [c], False, float(min(d, 1.0) * 255), max(1, round(w * k)), aa, sh)
    ctrl = ident.principal_ctrl + _sym(rng, lv.crease_jitter_frac, ident.principal_ctrl.shape)
    width = ident.principal_width * (1 + _sym(rng, lv.width_jitter, len(ctrl)))
    dark = ident.principal_dark * (1 + _sym(rng, lv.darkness_jitter, len(ctrl)))
    n = 4 * _PRINCIPAL_PIECES + 1
    taper = np.sin(np.pi * (np.arange(_PRINCIPAL_PIECES) + 0.5) / _PRINCIPAL_PIECES) ** 0.6
    for c, w, d in zip(_to_canvas(bezier(ctrl, n), size), width, dark, strict=True):
        for p in range(_PRINCIPAL_PIECES):
            piece = c[4 * p : 4 * p + 5]
            thick = max(1, round(w * k * (0.5 + 0.5 * taper[p])))
            cv2.polylines(img, [piece], False, float(min(d * taper[p], 1.0) * 255), thick, aa, sh)
    # skin texture: the hand's own wrinkles, in three darkness groups (one call each)
    segs = _to_canvas(ident.wrinkles, size)
    gain = 1 + _sym(rng, lv.darkness_jitter)
    bins = np.digitize(ident.wrinkle_dark, (0.13, 0.18))
    for b, d in enumerate((0.1, 0.155, 0.2)):
        cv2.polylines(tex, list(segs[bins == b]), False, d * gain * 255, max(1, round(k)), aa, sh)


def _smooth_shift(points: np.ndarray, rng: np.random.Generator, lv: Level) -> np.ndarray:
    """A slow displacement field (two waves of about one cycle per palm per axis): vessels
    move a little under the skin as the hand stretches, without breaking the tree."""
    out = np.zeros_like(points)
    for axis in range(2):
        for _ in range(2):
            wave = rng.normal(0.0, 4.5, 2)
            out[:, axis] += np.sin(points @ wave + rng.uniform(0, 2 * np.pi))
    return out * (lv.vein_jitter_frac / 2)


def _draw_vein(img: np.ndarray, ident: Identity, rng: np.random.Generator, lv: Level) -> None:
    size = round(img.shape[0] / (1 + 2 * MARGIN))
    k = size / REFERENCE_SIZE
    n_chain = int(ident.vein_chain.max()) + 1
    chain_max = np.zeros(n_chain)
    np.maximum.at(chain_max, ident.vein_chain, ident.vein_radius)
    drop = (chain_max < 1.2) & (rng.random(n_chain) < lv.vein_drop)
    width_gain = 1 + _sym(rng, lv.width_jitter)
    dark_gain = 1 + _sym(rng, lv.darkness_jitter)
    child = np.flatnonzero((ident.vein_parent >= 0) & ~drop[ident.vein_chain])
    pts = _to_canvas(ident.vein_nodes + _smooth_shift(ident.vein_nodes, rng, lv), size)
    segs = np.stack([pts[ident.vein_parent[child]], pts[child]], axis=1)
    r = ident.vein_radius[child]
    thick = np.maximum(1, np.round(2 * r * k * width_gain)).astype(int)
    for t in np.unique(thick):
        sel = thick == t
        shade = ident.vein_dark * dark_gain * min(1.0, 0.55 + 0.15 * float(r[sel].mean()))
        cv2.polylines(img, list(segs[sel]), False, min(shade, 1.0) * 255, int(t), cv2.LINE_AA, 4)


def _photometry(
    dark: np.ndarray,
    base: float,
    blur: float,
    light_rng: np.random.Generator,
    rng: np.random.Generator,
    lv: Level,
    size: int,
) -> np.ndarray:
    """Darkness map -> uint8 image under one capture's light (``light_rng``: illumination,
    vignetting, gain, offset), optics and sensor (``rng``: pores, blur, noise, JPEG)."""
    k = size / REFERENCE_SIZE
    x, y = _grid(size)
    phi = light_rng.uniform(0, 2 * np.pi)
    slope = light_rng.uniform(*lv.illumination)
    vignette = light_rng.uniform(*lv.vignetting)
    gain = 1 + _sym(light_rng, lv.gain)
    offset = _sym(light_rng, lv.offset)
    light = (x - 0.5) * np.float32(slope * np.cos(phi)) + (y - 0.5) * np.float32(
        slope * np.sin(phi)
    )
    light += 1
    light *= 1 - np.float32(vignette * 2) * _radius2(size)
    pores = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), k)
    pores = pores * np.float32(0.05) + 1
    img = light * (1 - dark) * pores
    img *= np.float32(base * gain)
    img += np.float32(offset)
    if blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), blur * k)
    img += np.float32(rng.uniform(*lv.noise)) * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    quality = int(rng.uniform(*lv.jpeg_quality))
    _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def render_capture(
    identity: Identity,
    sample_index: int,
    seed: int,
    level: str | Level = "medium",
    size: int = 128,
    print_bands: int = 1,
    band_names: tuple[str, ...] | None = None,
) -> Capture:
    """Capture ``sample_index`` of ``identity``: print and vein ROIs under one shared pose.

    ``print_bands`` 1 gives a grey print, 3 gives PolyU-like R,G,B; ``band_names`` picks other
    bands from BAND_PROFILES (e.g. ("nir700", "blue460") for CASIA). Any ``size`` renders the
    same capture at another resolution.
    """
    lv = get_level(level)
    names = band_names or DEFAULT_BANDS.get(print_bands)
    if names is None or any(n not in BAND_PROFILES for n in names):
        raise ValueError(
            f"print bands: got print_bands={print_bands} band_names={band_names}; use 1 or 3 "
            f"bands, or names from {', '.join(BAND_PROFILES)}"
        )
    geo = _rng(seed, identity, sample_index, 1)
    pose = _draw_pose(geo, lv)
    map_x, map_y = _pose_maps(pose, geo, size)
    canvas = round(size * (1 + 2 * MARGIN))
    lines = np.zeros((canvas, canvas), np.uint8)
    tex = np.zeros_like(lines)
    vessels = np.zeros_like(lines)
    _draw_print(lines, tex, identity, _rng(seed, identity, sample_index, 2), lv)
    _draw_vein(vessels, identity, _rng(seed, identity, sample_index, 3), lv)
    stack = cv2.merge([lines, tex, vessels])
    warped = cv2.remap(stack, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lines_w, tex_w, vessels_w = (warped[..., c].astype(np.float32) / 255 for c in range(3))

    photo = _rng(seed, identity, sample_index, 4)
    k = size / REFERENCE_SIZE
    scatter = cv2.GaussianBlur(vessels_w, (0, 0), photo.uniform(*lv.vein_blur) * k)
    vein_dark = photo.uniform(*lv.vein_contrast) * scatter + VEIN_CREASE_LEAK * lines_w
    vein_roi = _photometry(vein_dark, VEIN_BASE, 0.0, photo, photo, lv, size)
    bands = []
    for b, name in enumerate(names):
        prof = BAND_PROFILES[name]
        band_rng = _rng(seed, identity, sample_index, 10 + b)
        dark = (
            0.6 * prof["crease"] * lines_w
            + prof["wrinkle"] * tex_w
            + prof["vein_leak"] * 0.25 * scatter
        )
        blur = band_rng.uniform(*lv.print_blur)
        base = prof["base"] * band_rng.uniform(0.97, 1.03)
        # one flash for all bands: the same light stream, so the bands differ in skin, not light
        light = _rng(seed, identity, sample_index, 5)
        bands.append(_photometry(np.minimum(dark, 0.95), base, blur, light, band_rng, lv, size))
    print_roi = bands[0] if len(bands) == 1 else np.stack(bands, axis=-1)
    pose["left_hand"] = identity.left
    return Capture(print_roi, vein_roi, pose, lines_w, vessels_w)
