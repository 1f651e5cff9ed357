"""Where each data set keeps its images: one scanner per layout, all giving the same records.

The layouts are the reference code's (DESIGN §2), which the synthetic generator also writes.
Files are found by scanning and parsing names rather than by formatting expected names, so a
data set with fewer identities or samples than the published one (a subset, a synthetic set)
loads as it is. Anything missing gives one :class:`LayoutError` that names the layout expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LAYOUTS = ("polyu", "casiam", "tjppv", "iitd", "generic")

EXPECTED = {
    "polyu": "MS_PolyU/{Red_ind,Green_ind,Blue_ind,NIR_ind}/IIII_SSSS.jpg "
    "(print = Red,Green,Blue stacked; vein = NIR)",
    "casiam": "Casia_M/{casia_700,casia_460,casia_850}/III_SS.jpg "
    "(print = 700,460,460 nm; vein = 850 nm)",
    "tjppv": "Tongji_jpg/IIII_SSSS.jpg and Palmvein_ROI_gray_128x128/session{1,2}/NNNNN.bmp "
    "(sample S<=10 in session1 as (I-1)*10+S, the rest in session2 as (I-1)*10+S-10)",
    "iitd": "IITD/IIII/*.bmp (print only; one folder per identity)",
    "generic": "print/<identity>/<n>.png and vein/<identity>/<n>.png (vein optional)",
}

_PAIR = re.compile(r"^(\d+)_(\d+)$")
_TRAILING = re.compile(r"(\d+)$")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LayoutError(ValueError):
    """The data root does not hold the layout asked for."""


@dataclass(frozen=True)
class Record:
    """One capture: its identity, its sample key, the print band files and the vein file."""

    identity: str
    sample: int
    print_files: tuple[Path, ...]
    vein_file: Path | None


def layout_error(ds: str, root: Path, problem: str) -> LayoutError:
    return LayoutError(
        f"data set {ds!r} at {root}: {problem}. Expected {root}/{EXPECTED[ds]}. "
        f"Point --data-root (or PALM_DATA) at the folder that holds it, or write a synthetic one "
        f"with `palm-export synth` (see `palm-export synth --help`)."
    )


def _base(root: Path, top: str) -> Path:
    """Accept the folder holding ``top`` as well as ``top`` itself."""
    return root if root.name == top else root / top


def _pairs(folder: Path, ext: str) -> dict[tuple[int, int], Path]:
    out = {}
    for f in folder.glob(f"*{ext}"):
        m = _PAIR.match(f.stem)
        if m:
            out[(int(m[1]), int(m[2]))] = f
    return out


def _banded(ds: str, root: Path, top: str, bands: list[str], vein: str, ext: str, width: int):
    base = _base(root, top)
    folders = {b: base / b for b in [*bands, vein]}
    missing = [str(p) for p in folders.values() if not p.is_dir()]
    if missing:
        raise layout_error(ds, root, f"missing folder(s) {', '.join(missing)}")
    files = {b: _pairs(folders[b], ext) for b in folders}
    keys = sorted(files[bands[0]])
    if not keys:
        raise layout_error(ds, root, f"no IIII_SSSS{ext} images in {folders[bands[0]]}")
    records = []
    for key in keys:
        lost = [b for b in folders if key not in files[b]]
        if lost:
            raise layout_error(ds, root, f"sample {key} has no image in {', '.join(lost)}")
        pf = tuple(files[b][key] for b in bands)
        records.append(Record(f"{key[0]:0{width}d}", key[1], pf, files[vein][key]))
    return records


def _tjppv(root: Path) -> list[Record]:
    prints = _base(root, "Tongji_jpg")
    veins = root / "Palmvein_ROI_gray_128x128"
    for p in (prints, veins):
        if not p.is_dir():
            raise layout_error("tjppv", root, f"missing folder {p}")
    files = _pairs(prints, ".jpg")
    if not files:
        raise layout_error("tjppv", root, f"no IIII_SSSS.jpg images in {prints}")
    records = []
    for (i, j), f in sorted(files.items()):
        session, n = (1, j) if j <= 10 else (2, j - 10)
        v = veins / f"session{session}" / f"{(i - 1) * 10 + n:05d}.bmp"
        if not v.is_file():
            raise layout_error("tjppv", root, f"print {f.name} has no vein image {v}")
        records.append(Record(f"{i:04d}", j, (f,), v))
    return records


def _images(folder: Path) -> list[tuple[int, Path]]:
    """Images of one identity folder with their sample keys: the number a name ends with (so
    that 10 sorts after 9), else the position in name order."""
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_EXT)
    numbers = [_TRAILING.search(f.stem) for f in files]
    if all(numbers) and len({int(m[1]) for m in numbers}) == len(files):
        return sorted((int(m[1]), f) for m, f in zip(numbers, files, strict=True))
    return [(n + 1, f) for n, f in enumerate(files)]


def _iitd(root: Path) -> list[Record]:
    base = _base(root, "IITD")
    if not base.is_dir():
        raise layout_error("iitd", root, f"missing folder {base}")
    records = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        records += [Record(d.name, n, (f,), None) for n, f in _images(d)]
    if not records:
        raise layout_error("iitd", root, f"no identity folders with images in {base}")
    return records


def _vein_for(ds: str, root: Path, print_file: Path, vein_dir: Path) -> Path:
    for ext in _IMAGE_EXT:
        v = vein_dir / (print_file.stem + ext)
        if v.is_file():
            return v
    raise layout_error(ds, root, f"print {print_file} has no vein image in {vein_dir}")


def _generic(root: Path) -> list[Record]:
    prints, veins = root / "print", root / "vein"
    if not prints.is_dir():
        raise layout_error("generic", root, f"missing folder {prints}")
    records = []
    for d in sorted(p for p in prints.iterdir() if p.is_dir()):
        for n, f in _images(d):
            v = _vein_for("generic", root, f, veins / d.name) if veins.is_dir() else None
            records.append(Record(d.name, n, (f,), v))
    if not records:
        raise layout_error("generic", root, f"no identity folders with images in {prints}")
    return records


def scan(ds: str, root: str | Path) -> list[Record]:
    """All captures of data set ``ds`` under ``root``, sorted by identity then sample."""
    if ds not in LAYOUTS:
        raise ValueError(f"unknown data set {ds!r}; choose one of {LAYOUTS}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(ds, root, "the folder does not exist")
    if ds == "polyu":
        bands = ["Red_ind", "Green_ind", "Blue_ind"]
        records = _banded(ds, root, "MS_PolyU", bands, "NIR_ind", ".jpg", 4)
    elif ds == "casiam":
        bands = ["casia_700", "casia_460", "casia_460"]
        records = _banded(ds, root, "Casia_M", bands, "casia_850", ".jpg", 3)
    elif ds == "tjppv":
        records = _tjppv(root)
    elif ds == "iitd":
        records = _iitd(root)
    else:
        records = _generic(root)
    return sorted(records, key=lambda r: (r.identity, r.sample))
