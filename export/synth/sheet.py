"""A contact sheet of a level: a few hands, each as R,G,B print, grey print and vein captures."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from export.synth.identity import make_identity
from export.synth.levels import Level, get_level
from export.synth.render import render_capture


def contact_sheet(level: str | Level, seed: int = 0, ids: int = 3, samples: int = 2) -> np.ndarray:
    """BGR image: one row per hand; columns = its samples as colour print, grey print, vein."""
    lv = get_level(level)
    rows = []
    for i in range(ids):
        ident = make_identity(i, seed, lv)
        colour, grey, vein = [], [], []
        for j in range(samples):
            rgb = render_capture(ident, j, seed, lv, print_bands=3)
            one = render_capture(ident, j, seed, lv)
            colour.append(rgb.print_roi[..., ::-1])
            grey.append(cv2.cvtColor(one.print_roi, cv2.COLOR_GRAY2BGR))
            vein.append(cv2.cvtColor(one.vein_roi, cv2.COLOR_GRAY2BGR))
        rows.append(np.hstack(colour + grey + vein))
    return np.vstack(rows)


def write_contact_sheet(path: Path, level: str | Level, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), contact_sheet(level, seed), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}: check that the folder is writable")
    return path
