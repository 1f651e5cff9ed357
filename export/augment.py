"""Training augmentation, as the reference: colour jitter, rotation ±15°, perspective, affine.

It works on the uint8 ROI before agent.preprocess turns it into a tensor, so the augmented image
goes through exactly the preprocessing the device uses. The geometric parts are composed into one
homography and applied with a single OpenCV warp (one interpolation, borders reflected so that no
black corners teach the network where the ROI ends). Every random draw comes from the generator
passed in, which the data set seeds per (seed, epoch, sample): runs are reproducible with any
number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 15.0
    translate: float = 0.05  # fraction of the side
    scale: tuple[float, float] = (0.9, 1.1)
    shear_deg: float = 5.0
    perspective: float = 0.05  # corner jitter, fraction of the side
    brightness: float = 0.2
    contrast: float = 0.2


def _homography(size: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    c = (size - 1) / 2.0
    to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], dtype=np.float64)
    a = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    sh = np.tan(np.deg2rad(rng.uniform(-cfg.shear_deg, cfg.shear_deg)))
    s = rng.uniform(*cfg.scale)
    t = rng.uniform(-cfg.translate, cfg.translate, 2) * size
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.array([[s, s * sh, c + t[0]], [0, s, c + t[1]], [0, 0, 1]]) @ rot @ to_centre
    src = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float32)
    dst = src + rng.uniform(-cfg.perspective, cfg.perspective, (4, 2)).astype(np.float32) * size
    persp = cv2.getPerspectiveTransform(src, dst)
    return persp @ affine


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()):
    """uint8 (S, S) or (S, S, C) -> augmented uint8 of the same shape."""
    size = img.shape[0]
    h = _homography(size, rng, cfg)
    out = cv2.warpPerspective(
        img, h, (img.shape[1], size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    if out.ndim < img.ndim:
        out = out[..., None]
    gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    bias = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    mean = out.mean()
    out = (out.astype(np.float32) - mean) * gain + mean + bias
    return np.clip(out, 0, 255).astype(np.uint8)
