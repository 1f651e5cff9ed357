"""One synthetic hand: the palm-print creases and the palm-vein tree that make it an identity.

Everything is stored in the canonical palm frame, normalised so that the ROI at rest is the unit
square [0, 1]² (x to the right, y down, fingers at the top, thumb side on the left for a right
hand). Patterns reach past the square so that a rotated or shifted capture still sees skin.
Line widths and vessel radii are in pixels of a 128-pixel ROI. Print and vein are drawn from
separate random streams: they are independent patterns, as in real hands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.synth.levels import Level, get_level

# canonical coordinates drawn in [-MARGIN, 1 + MARGIN]; the renderer's canvas covers the same
MARGIN = 0.25

# Principal creases as cubic Bézier control points (right hand): mean and between-hand spread.
# heart (distal transverse), head (proximal transverse), life (thenar), fate (rare, vertical).
_PRINCIPAL_MEAN = {
    "heart": ((1.18, 0.22), (0.78, 0.30), (0.45, 0.14), (0.18, -0.06)),
    "head": ((-0.18, 0.30), (0.25, 0.36), (0.62, 0.50), (1.05, 0.66)),
    "life": ((-0.15, 0.34), (0.28, 0.45), (0.40, 0.82), (0.28, 1.20)),
    "fate": ((0.58, 1.20), (0.55, 0.85), (0.60, 0.55), (0.55, 0.25)),
}
_PRINCIPAL_SPREAD = {
    "heart": ((0.03, 0.07), (0.08, 0.08), (0.10, 0.09), (0.10, 0.08)),
    "head": ((0.03, 0.06), (0.08, 0.08), (0.10, 0.10), (0.08, 0.12)),
    "life": ((0.03, 0.06), (0.08, 0.08), (0.08, 0.08), (0.12, 0.03)),
    "fate": ((0.12, 0.03), (0.10, 0.06), (0.12, 0.06), (0.12, 0.10)),
}
FATE_PROBABILITY = 0.25


@dataclass(frozen=True)
class Identity:
    """A hand. Arrays are read-only in spirit: the renderer jitters copies per capture."""

    index: int
    seed: int
    left: bool
    principal_ctrl: np.ndarray  # (P, 4, 2) cubic Bézier control points
    principal_width: np.ndarray  # (P,) px
    principal_dark: np.ndarray  # (P,) 0..1
    secondary_ctrl: np.ndarray  # (S, 4, 2)
    secondary_width: np.ndarray  # (S,)
    secondary_dark: np.ndarray  # (S,)
    wrinkles: np.ndarray  # (W, 2, 2) short straight segments of the skin texture
    wrinkle_dark: np.ndarray  # (W,)
    vein_nodes: np.ndarray  # (N, 2)
    vein_parent: np.ndarray  # (N,) index of the parent node, -1 for a root
    vein_radius: np.ndarray  # (N,) px, radius of the segment parent -> node
    vein_chain: np.ndarray  # (N,) id of the unbranched run the node belongs to
    vein_dark: float


def bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Points on cubic Bézier curves: ctrl (..., 4, 2) -> (..., n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    b = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)[..., 0]
    return np.einsum("nk,...kd->...nd", b, ctrl)


def _principal(rng: np.random.Generator, spread: float) -> tuple[np.ndarray, ...]:
    names = ["heart", "head", "life"]
    if rng.random() < FATE_PROBABILITY:
        names.append("fate")
    ctrl = np.stack(
        [
            np.asarray(_PRINCIPAL_MEAN[n])
            + spread * np.asarray(_PRINCIPAL_SPREAD[n]) * rng.standard_normal((4, 2))
            for n in names
        ]
    )
    width = rng.uniform(1.8, 3.2, len(names))
    dark = rng.uniform(0.45, 0.8, len(names))
    if len(names) == 4:
        width[3] *= 0.6
        dark[3] *= 0.6
    return ctrl, width, dark


def _secondary(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Short curved creases: mostly running along the palm's main flexion directions."""
    n = int(rng.integers(10, 26))
    start = rng.uniform(-0.1, 1.1, (n, 2))
    # flexion creases of the palm run either across it or roughly along the fingers
    angle = np.where(rng.random(n) < 0.5, rng.normal(0.15, 0.35, n), rng.normal(1.45, 0.35, n))
    length = rng.uniform(0.1, 0.4, n)
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    normal = direction[:, ::-1] * np.array([-1.0, 1.0])
    bend = rng.normal(0.0, 0.08, n)[:, None]
    t = np.array([0.0, 1 / 3, 2 / 3, 1.0])[None, :, None]
    arc = np.array([0.0, 1.0, 1.0, 0.0])[None, :, None]
    ctrl = (
        start[:, None, :]
        + t * (length[:, None] * direction)[:, None, :]
        + arc * (bend * length[:, None] * normal)[:, None, :]
    )
    return ctrl, rng.uniform(0.7, 1.5, n), rng.uniform(0.2, 0.45, n)


def _wrinkles(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fine criss-cross skin texture: two families of short segments per hand."""
    n = int(rng.integers(220, 320))
    base = rng.uniform(0.0, np.pi)
    family = rng.random(n) < 0.5
    angle = np.where(family, base, base + rng.uniform(1.0, 1.6)) + rng.normal(0.0, 0.2, n)
    length = rng.uniform(0.02, 0.06, n)
    mid = rng.uniform(-MARGIN, 1 + MARGIN, (n, 2))
    half = 0.5 * length[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return np.stack([mid - half, mid + half], axis=1), rng.uniform(0.08, 0.22, n)


def _vein_tree(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Space colonisation: vessels grow from 2-4 roots at the palm's edges towards attractors.

    Radii follow Murray's law (r_parent³ = Σ r_child³), scaled so the widest vessel of the hand
    has a radius between 2.2 and 3.6 pixels of a 128-pixel ROI.
    """
    lo, hi = -MARGIN + 0.05, 1 + MARGIN - 0.05
    n_roots = int(rng.integers(2, 5))
    roots = []
    for r in range(n_roots):
        side = 0 if r == 0 else int(rng.integers(0, 3))  # 0 wrist, 1 thumb side, 2 ulnar side
        t = rng.uniform(0.1, 0.9)
        roots.append([(t, hi), (lo, 0.4 + 0.6 * t), (hi, 0.3 + 0.7 * t)][side])
    nodes = [np.asarray(p, dtype=np.float64) for p in roots]
    parent = [-1] * n_roots
    attract = rng.uniform(lo, hi, (int(rng.integers(70, 120)), 2))
    step, influence, kill = 0.045, 0.45, 0.07
    for _ in range(120):
        if len(attract) == 0:
            break
        pts = np.asarray(nodes)
        d = np.linalg.norm(attract[:, None, :] - pts[None, :, :], axis=2)
        near = d.argmin(axis=1)
        active = d[np.arange(len(attract)), near] < influence
        if not active.any():
            break
        pull = np.zeros_like(pts)
        unit = (attract - pts[near]) / np.maximum(d[np.arange(len(attract)), near], 1e-9)[:, None]
        np.add.at(pull, near[active], unit[active])
        strength = np.linalg.norm(pull, axis=1)
        grow = np.flatnonzero(strength > 1e-6)
        direction = pull[grow] / strength[grow, None] + rng.normal(0.0, 0.15, (len(grow), 2))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        new = pts[grow] + step * direction
        nodes.extend(new)
        parent.extend(grow.tolist())
        dn = np.linalg.norm(attract[:, None, :] - new[None, :, :], axis=2).min(axis=1)
        attract = attract[dn > kill]
    nodes_a = np.asarray(nodes)
    parent_a = np.asarray(parent)
    n = len(nodes_a)
    children = np.bincount(parent_a[parent_a >= 0], minlength=n)
    cubed = np.zeros(n)
    radius = np.ones(n)
    for k in range(n - 1, -1, -1):  # children are always created after their parent
        radius[k] = 1.0 if children[k] == 0 else cubed[k] ** (1 / 3)
        if parent_a[k] >= 0:
            cubed[parent_a[k]] += radius[k] ** 3
    radius *= rng.uniform(2.2, 3.6) / radius.max()
    radius = np.maximum(radius, 0.6)
    chain = np.zeros(n, dtype=np.int64)
    next_chain = 0
    for k in range(n):
        p = parent_a[k]
        if p < 0 or children[p] > 1:
            chain[k] = next_chain
            next_chain += 1
        else:
            chain[k] = chain[p]
    return nodes_a, parent_a, radius, chain


def make_identity(identity_index: int, seed: int, level: str | Level = "medium") -> Identity:
    """Hand ``identity_index`` of ``seed``: always the same hand for the same arguments.

    ``level`` only narrows how far hands differ from the average palm (its identity_spread);
    the random draws are the same at every level, so a hand keeps its character across levels.
    """
    lv = get_level(level)
    print_rng = np.random.default_rng([seed, identity_index, 101])
    vein_rng = np.random.default_rng([seed, identity_index, 202])
    left = bool(print_rng.random() < 0.5)
    p_ctrl, p_width, p_dark = _principal(print_rng, lv.identity_spread)
    s_ctrl, s_width, s_dark = _secondary(print_rng)
    wrinkles, w_dark = _wrinkles(print_rng)
    nodes, parent, radius, chain = _vein_tree(vein_rng)
    if left:  # a left palm seen from the same side is the mirror image
        for arr in (p_ctrl, s_ctrl, wrinkles, nodes):
            arr[..., 0] = 1.0 - arr[..., 0]
    return Identity(
        index=identity_index,
        seed=seed,
        left=left,
        principal_ctrl=p_ctrl,
        principal_width=p_width,
        principal_dark=p_dark,
        secondary_ctrl=s_ctrl,
        secondary_width=s_width,
        secondary_dark=s_dark,
        wrinkles=wrinkles,
        wrinkle_dark=w_dark,
        vein_nodes=nodes,
        vein_parent=parent,
        vein_radius=radius,
        vein_chain=chain,
        vein_dark=float(vein_rng.uniform(0.8, 1.0)),
    )
