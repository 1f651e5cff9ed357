"""Synthetic full-hand NIR frames with ground-truth palm ROIs, for the device's ROI search.

A hand is an explicit outline (palm, four tapered fingers, thumb, a wrist fading into the dark)
built in palm-width units around the palm centre, as the palm of a LEFT hand looks to a camera
facing it (thumb on the left); a right hand is its mirror image. The finger valleys are
vertices of that outline (the bottoms of U-shaped webs), so the ground truth is exact and
computed with the device's own convention, :func:`agent.roi.square_from_valleys`. The palm is
textured with a print (or vein) ROI from :func:`export.synth.render_capture`, placed exactly on
the ground-truth square, so cutting the true ROI out of a frame gives that capture back.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.roi import RoiSquare, square_from_valleys
from export.synth.identity import make_identity
from export.synth.levels import get_level
from export.synth.render import render_capture

logger = logging.getLogger(__name__)

WEB_RADIUS = 0.04  # U-shaped web between fingers, palm widths


@dataclass(frozen=True)
class HandLevel:
    rotation_deg: float  # placement rotation, uniform in [-m, m]
    scale: tuple[float, float]  # palm width / frame height
    edge_blur: tuple[float, float]  # px
    noise: tuple[float, float]  # grey levels
    falloff: tuple[float, float]  # relative darkening at the hand's extremities
    skin: tuple[float, float]  # grey level of the lit palm
    background: tuple[float, float]
    splay_jitter_deg: float


HAND_LEVELS = {
    "easy": HandLevel(10, (0.27, 0.31), (0.6, 1.0), (1, 2), (0.05, 0.2), (170, 200), (5, 15), 2),
    "medium": HandLevel(25, (0.24, 0.31), (0.8, 1.6), (2, 5), (0.15, 0.35), (150, 200), (5, 25), 3),
    "hard": HandLevel(40, (0.21, 0.31), (1.2, 2.4), (4, 9), (0.25, 0.5), (120, 200), (10, 40), 5),
}


def _finger(a: np.ndarray, b: np.ndarray, angle_deg: float, length: float) -> list[np.ndarray]:
    """Outline from base corner a to base corner b around a tapered, round-tipped finger."""
    t = math.radians(angle_deg)
    d = np.array([math.sin(t), -math.cos(t)])  # 0 degrees points up the frame
    p = np.array([-d[1], d[0]])
    if np.dot(p, b - a) < 0:
        p = -p
    half_tip = 0.8 * float(np.hypot(*(b - a))) / 2
    tip = (a + b) / 2 + d * length
    left, right = tip - half_tip * p, tip + half_tip * p
    pts = [a + (left - a) * s for s in np.linspace(0, 1, 10)]
    pts += [
        tip + half_tip * (-math.cos(f) * p + math.sin(f) * d) for f in np.linspace(0, math.pi, 15)
    ]
    pts += [right + (b - right) * s for s in np.linspace(0, 1, 10)]
    return pts


def _web(v: np.ndarray, tangent: np.ndarray) -> list[np.ndarray]:
    """U-shaped web whose lowest point is the valley v, traversed along +tangent."""
    down = np.array([-tangent[1], tangent[0]])
    if down[1] < 0:
        down = -down
    c = v - WEB_RADIUS * down
    return [
        c + WEB_RADIUS * (math.cos(f) * tangent + math.sin(f) * down)
        for f in np.linspace(math.pi, 0, 11)
    ]


def hand_outline(
    rng: np.random.Generator, splay_offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Left-hand outline (N, 2) in palm widths, and its three finger valleys (3, 2).

    ``rng`` draws the hand's own shape; ``splay_offset`` (4,) degrees opens the fingers of one
    capture. Valleys, left to right: index-middle, middle-ring, ring-little.
    """

    def j(m: float) -> float:
        return float(rng.uniform(-m, m))

    valleys = np.array(
        [
            [-0.235 + j(0.02), -0.50 + j(0.02)],
            [0.0 + j(0.02), -0.535 + j(0.02)],
            [0.235 + j(0.02), -0.49 + j(0.02)],
        ]
    )
    splay = np.array([-12.0, -3.0, 6.0, 16.0]) + splay_offset
    length = np.array([0.70, 0.80, 0.74, 0.56]) * rng.uniform(0.92, 1.08, 4)
    thumb_lo, thumb_hi = np.array([-0.52, 0.18 + j(0.04)]), np.array([-0.44, -0.10 + j(0.03)])
    pts: list[np.ndarray] = [np.array([-0.36, 1.35]), np.array([-0.46, 0.55])]
    pts += _finger(thumb_lo, thumb_hi, -50 + j(8), 0.55 * rng.uniform(0.9, 1.1))
    pts.append(np.array([-0.40, -0.22]))  # the deep thumb-index web
    tangent = (valleys[2] - valleys[0]) / np.hypot(*(valleys[2] - valleys[0]))
    webs = [_web(v, tangent) for v in valleys]
    starts = [np.array([-0.47 + j(0.02), -0.40 + j(0.02)])] + [w[-1] for w in webs]
    ends = [w[0] for w in webs] + [np.array([0.46 + j(0.02), -0.34 + j(0.03)])]
    for k in range(4):
        pts += _finger(starts[k], ends[k], splay[k], length[k])
        if k < 3:
            pts += webs[k][1:-1]
    pts += [np.array([0.52, -0.15]), np.array([0.50, 0.45]), np.array([0.36, 1.35])]
    return np.array(pts), valleys


def _placement(
    outline: np.ndarray, size: tuple[int, int], lv: HandLevel, rng: np.random.Generator
) -> np.ndarray:
    """2x3 affine from palm-width units to frame pixels: rotated, scaled, fully inside."""
    w, h = size
    angle = math.radians(rng.uniform(-lv.rotation_deg, lv.rotation_deg))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = h * rng.uniform(*lv.scale)
    for _ in range(20):
        pts = outline @ (rot * scale).T
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        room = np.array([w, h]) - 8 - (hi - lo)
        if (room > 0).all():
            offset = 4 - lo + rng.uniform(0, 1, 2) * room
            return np.hstack([rot * scale, offset[:, None]])
        scale *= 0.92
    raise ValueError(f"frame {size} is too small for a hand")


def _hand_level(level: str) -> HandLevel:
    return HAND_LEVELS.get(get_level(level).name, HAND_LEVELS["medium"])


def render_hand_frame(
    identity_index: int,
    sample_index: int,
    seed: int,
    level: str = "medium",
    size: tuple[int, int] = (640, 480),
    hand: str | None = None,
    modality: str = "print",
) -> tuple[np.ndarray, dict]:
    """One grey NIR-style frame (H, W) uint8 of a whole hand, and its ground truth.

    ``size`` is (width, height). ``hand`` defaults to the identity's own hand. The truth holds
    the ROI square in :mod:`agent.roi`'s convention (centre, side, angle_deg, corners) and the
    two valleys it was built from.
    """
    if modality not in ("print", "vein"):
        raise ValueError(f"modality must be 'print' or 'vein', got {modality!r}")
    identity = make_identity(identity_index, seed, level)
    hand = hand or ("left" if identity.left else "right")
    if hand not in ("left", "right"):
        raise ValueError(f"hand must be 'left' or 'right', got {hand!r}")
    lv = _hand_level(level)
    rng = np.random.default_rng([seed, identity_index, sample_index, 7002])
    splay = rng.uniform(-lv.splay_jitter_deg, lv.splay_jitter_deg, 4)
    outline, valleys = hand_outline(np.random.default_rng([seed, identity_index, 7001]), splay)
    if hand == "right":
        outline, valleys = outline * [-1, 1], valleys[::-1] * [-1, 1]
    affine = _placement(outline, size, lv, rng)

    def to_frame(p: np.ndarray) -> np.ndarray:
        return np.asarray(p, float) @ affine[:, :2].T + affine[:, 2]

    square = square_from_valleys(to_frame(valleys[0]), to_frame(valleys[2]), to_frame([0, 0]))
    capture = render_capture(
        identity, sample_index, seed, level, size=128 if square.side <= 128 else 256
    )
    texture = capture.print_roi if modality == "print" else capture.vein_roi
    frame = _paint(to_frame(outline), square, affine, size, lv, rng, texture)
    truth = {
        **square.to_dict(),
        "valleys": to_frame(valleys[[0, 2]]).round(3).tolist(),
        "hand": hand,
        "identity": identity_index,
        "sample": sample_index,
        "level": get_level(level).name,
        "modality": modality,
        "convention": "agent.roi.square_from_valleys",
    }
    return frame, truth


def _paint(
    outline_px: np.ndarray,
    square: RoiSquare,
    affine: np.ndarray,
    size: tuple[int, int],
    lv: HandLevel,
    rng: np.random.Generator,
    texture: np.ndarray,
) -> np.ndarray:
    """Lit hand over a dark background: smooth edges, light falloff, fading wrist, noise."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(outline_px * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    mask = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), rng.uniform(*lv.edge_blur))
    inv = cv2.invertAffineTransform(affine)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    px = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    py = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    # the light is aimed at the palm; the forearm drops away out of it
    light = 1 - rng.uniform(*lv.falloff) * np.clip((px**2 + (py + 0.2) ** 2) / 1.8, 0, 1)
    wrist = np.clip((1.25 - py) / 0.6, 0, 1)
    n = texture.shape[0]
    to_frame = cv2.getAffineTransform(
        np.float32([[0, 0], [n, 0], [n, n]]), square.corners()[:3].astype(np.float32)
    )
    tex = texture.astype(np.float32)
    tex = tex if tex.ndim == 2 else tex.mean(axis=2)
    # keep the lines, drop the capture's own shading, so the patch has no edge on the palm
    tex = tex / cv2.GaussianBlur(tex, (0, 0), n / 8)
    mod = cv2.warpAffine(tex, to_frame, (w, h), borderValue=1.0)
    feather = cv2.warpAffine(np.ones((n, n), np.float32), to_frame, (w, h))
    feather = cv2.GaussianBlur(feather, (0, 0), 0.03 * square.side)
    mod = 1 + (mod - 1) * feather
    skin, bg = rng.uniform(*lv.skin), rng.uniform(*lv.background)
    img = bg + mask * np.maximum(skin * light * wrist * mod - bg, 0)
    img += rng.normal(0, rng.uniform(*lv.noise), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_identity(
    out_dir: Path, identity_index: int, samples: int, level: str, seed: int
) -> list[Path]:
    paths = []
    for modality in ("print", "vein"):
        folder = out_dir / modality
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(samples):
            frame, truth = render_hand_frame(identity_index, j, seed, level, modality=modality)
            path = folder / f"{identity_index:04d}_{j:02d}.png"
            cv2.imwrite(str(path), frame)
            path.with_suffix(".json").write_text(json.dumps(truth, indent=1))
            paths.append(path)
    return paths


def write_hand_frames(
    out_dir: Path,
    ids: int,
    samples: int,
    level: str,
    seed: int,
    workers: int = 0,
    video: bool = False,
) -> list[Path]:
    """Write ``{print,vein}/IIII_SS.png`` frames, each with its truth ``.json`` beside it.

    ``video`` also writes ``print.avi`` and ``vein.avi`` (MJPG, 10 fps, frames in file order)
    with ``print.json`` / ``vein.json`` listing each video frame's truth, for replay tests.
    """
    out_dir = Path(out_dir)
    if workers > 0:
        # spawn, not fork: the caller may hold threads (a runtime, a logger) a fork would copy
        # mid-lock into the children
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [
                pool.submit(_write_identity, out_dir, i, samples, level, seed) for i in range(ids)
            ]
            paths = [p for job in jobs for p in job.result()]
    else:
        paths = [p for i in range(ids) for p in _write_identity(out_dir, i, samples, level, seed)]
    logger.info("hand frames written dir=%s frames=%d level=%s", out_dir, len(paths), level)
    if video:
        for modality in ("print", "vein"):
            frames = sorted(p for p in paths if p.parent.name == modality)
            paths += write_video(frames, out_dir / f"{modality}.avi")
    return paths


def write_video(frames: list[Path], path: Path, fps: float = 10.0) -> list[Path]:
    """Frames (with truth .json beside them) -> an MJPG .avi and a .json list of truths."""
    first = cv2.imread(str(frames[0]), cv2.IMREAD_GRAYSCALE)
    h, w = first.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    truths = []
    for f in frames:
        writer.write(cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR))
        truths.append(json.loads(f.with_suffix(".json").read_text()))
    writer.release()
    path.with_suffix(".json").write_text(json.dumps(truths))
    return [path, path.with_suffix(".json")]
