"""Where each ROI of a synthetic set goes, in the layouts of the real data sets.

The layouts are those of docs/training.md#the-data-sets-and-where-their-files-go.

Identities ``i`` and samples ``j`` are 1-based in every file name, as in the real sets; the
in-memory API counts from 0, and ``i = identity_index + 1``, ``j = sample_index + 1``.

- polyu:   MS_PolyU/{Red_ind,Green_ind,Blue_ind,NIR_ind}/%04d_%04d.jpg % (i, j)
- casiam:  Casia_M/{casia_700,casia_460,casia_850}/%03d_%02d.jpg % (i, j)
- tjppv:   Tongji_jpg/%04d_%04d.jpg % (i, j) for the print; the vein of sample j is
           Palmvein_ROI_gray_128x128/session1/%05d.bmp % ((i-1)*10 + j)       for j <= 10,
           Palmvein_ROI_gray_128x128/session2/%05d.bmp % ((i-1)*10 + j - 10)  for j >  10
           (so at most 20 samples, as the real set: 10 per session)
- iitd:    IITD/%04d/%03d_%d.bmp % (i, (i-1) % 230 + 1, j), print only (the real set holds 230
           subjects' left and right hands as 460 identities, and files keep the subject number)
- generic: print/%04d/%02d.png and vein/%04d/%02d.png % (i, j)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# a file's content: ("print", band) or ("vein", 0)
Source = tuple[str, int]


@dataclass(frozen=True)
class Layout:
    name: str
    bands: tuple[str, ...]  # print bands to render, by render.BAND_PROFILES name
    files: Callable[[int, int], list[tuple[str, Source]]]  # (i, j) 1-based -> relpaths
    max_samples: int | None = None


def _polyu(i: int, j: int) -> list[tuple[str, Source]]:
    name = f"{i:04d}_{j:04d}.jpg"
    dirs = ("Red_ind", "Green_ind", "Blue_ind")
    out = [(f"MS_PolyU/{d}/{name}", ("print", b)) for b, d in enumerate(dirs)]
    return [*out, (f"MS_PolyU/NIR_ind/{name}", ("vein", 0))]


def _casiam(i: int, j: int) -> list[tuple[str, Source]]:
    name = f"{i:03d}_{j:02d}.jpg"
    return [
        (f"Casia_M/casia_700/{name}", ("print", 0)),
        (f"Casia_M/casia_460/{name}", ("print", 1)),
        (f"Casia_M/casia_850/{name}", ("vein", 0)),
    ]


def _tjppv(i: int, j: int) -> list[tuple[str, Source]]:
    session, k = (1, j) if j <= 10 else (2, j - 10)
    return [
        (f"Tongji_jpg/{i:04d}_{j:04d}.jpg", ("print", 0)),
        (f"Palmvein_ROI_gray_128x128/session{session}/{(i - 1) * 10 + k:05d}.bmp", ("vein", 0)),
    ]


def _iitd(i: int, j: int) -> list[tuple[str, Source]]:
    return [(f"IITD/{i:04d}/{(i - 1) % 230 + 1:03d}_{j:d}.bmp", ("print", 0))]


def _generic(i: int, j: int) -> list[tuple[str, Source]]:
    return [
        (f"print/{i:04d}/{j:02d}.png", ("print", 0)),
        (f"vein/{i:04d}/{j:02d}.png", ("vein", 0)),
    ]


LAYOUTS: dict[str, Layout] = {
    "polyu": Layout("polyu", ("red", "green", "blue"), _polyu),
    "casiam": Layout("casiam", ("nir700", "blue460"), _casiam),
    "tjppv": Layout("tjppv", ("grey",), _tjppv, max_samples=20),
    "iitd": Layout("iitd", ("grey",), _iitd),
    "generic": Layout("generic", ("grey",), _generic),
}

# fixed encoder settings: the same pixels always give the same bytes
_WRITE_PARAMS = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], ".png": [cv2.IMWRITE_PNG_COMPRESSION, 3]}


def get_layout(name: str, samples: int | None = None) -> Layout:
    try:
        layout = LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}: use one of {', '.join(LAYOUTS)}") from None
    if samples is not None and layout.max_samples is not None and samples > layout.max_samples:
        raise ValueError(
            f"layout {name} holds at most {layout.max_samples} samples per identity "
            f"(got {samples}): ask for fewer samples or use --layout generic"
        )
    return layout


def expected_files(name: str, ids: int, samples: int) -> list[str]:
    """Every relative path a set of ``ids`` × ``samples`` has in this layout, sorted."""
    layout = get_layout(name, samples)
    paths = (
        p for i in range(1, ids + 1) for j in range(1, samples + 1) for p, _ in layout.files(i, j)
    )
    return sorted(paths)


def write_capture(
    root: Path, layout: Layout, i: int, j: int, print_roi: np.ndarray, vein_roi: np.ndarray
) -> list[Path]:
    """Write one capture's files (1-based i, j) under ``root``; returns the paths written."""
    written = []
    for rel, (kind, band) in layout.files(i, j):
        img = (
            vein_roi
            if kind == "vein"
            else (print_roi if print_roi.ndim == 2 else print_roi[..., band])
        )
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(
            str(path), np.ascontiguousarray(img), _WRITE_PARAMS.get(path.suffix, [])
        ):
            raise OSError(f"could not write {path}: check that the disk has space and is writable")
        written.append(path)
    return written
