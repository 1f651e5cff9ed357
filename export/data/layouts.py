"""Where each data set keeps its images: one scanner per layout, all giving the same records.

The layouts are the reference code's (docs/training.md#the-data-sets-and-where-their-files-go),
which the synthetic generator also writes.
Files are found by scanning and parsing names rather than by formatting expected names, so a
data set with fewer identities or samples than the published one (a subset, a synthetic set)
loads as it is. Anything missing gives one :class:`LayoutError` that names the layout expected,
and where the data set sits a folder or two off --data-root, the --data-root that finds it.

Real downloads are untidy: extensions in either case (.JPG, .BMP) match, and hidden files
(.DS_Store, macOS's ``._name`` copies of every image, which are not images) and ``__MACOSX``
folders are never taken for captures.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from export.text import first_few

logger = logging.getLogger(__name__)

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
# images of other kinds: the loaders take none of them, and a capture saved as .webp or .gif was
# left out without a word; they are named in the warning about the files left out
_OTHER_IMAGE_EXT = (".webp", ".gif", ".jp2", ".j2k", ".pgm", ".ppm", ".pnm", ".heic", ".avif")


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


def _visible(p: Path) -> bool:
    """Not a hidden file or an archiver's metadata folder (``.DS_Store``, ``._0001_0001.jpg``
    from a Mac, ``__MACOSX``)."""
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    """The visible files of ``folder`` with one of ``exts``, in either case."""
    return [f for f in folder.iterdir() if f.suffix.lower() in exts and _visible(f) and f.is_file()]


def _other_kinds(folder: Path, taken: tuple[str, ...], shown: str = "") -> list[str]:
    """The image files in ``folder`` that are not of a kind in ``taken``, as ``shown/name``."""
    if not folder.is_dir():
        return []
    others = _files(folder, _IMAGE_EXT + _OTHER_IMAGE_EXT)
    return sorted(f"{shown}{f.name}" for f in others if f.suffix.lower() not in taken)


def _warn_other_kinds(ds: str, where: Path, names: list[str], taken: tuple[str, ...]) -> None:
    """One warning naming the images a layout leaves out for their kind (.webp, .gif, ...)."""
    if names:
        logger.warning(
            "data set %r: %d image file(s) in %s are not %s and are left out: %s",
            ds, len(names), where, "/".join(e[1:] for e in taken), first_few(names),
        )  # fmt: skip


def _pairs(ds: str, root: Path, folder: Path, ext: str, name: str) -> dict[tuple[int, int], Path]:
    """The captures of one folder by (identity, sample). An image named otherwise (a copy
    ``001_01 (1).jpg``, another extension) is left out with a warning, and two names for one
    capture (``001_1.jpg`` beside ``001_01.jpg``) are refused: either one could be taken."""
    out: dict[tuple[int, int], Path] = {}
    skipped = []
    for f in sorted(_files(folder, _IMAGE_EXT + _OTHER_IMAGE_EXT)):
        m = _PAIR.match(f.stem)
        if not m or f.suffix.lower() != ext:
            skipped.append(f.name)
            continue
        key = (int(m[1]), int(m[2]))
        if key in out:
            raise layout_error(
                ds, root, f"{out[key].name} and {f.name} in {folder} name the same capture; "
                "delete or rename one"
            )  # fmt: skip
        out[key] = f
    if skipped:
        logger.warning(
            "%d image file(s) in %s are not named %s and are left out: %s",
            len(skipped), folder, name, first_few(skipped),
        )  # fmt: skip
    return out


def _where(root: Path, tops: tuple[str, ...]) -> str:
    """A hint for a --data-root one or two folders off the one that holds ``tops[0]``: inside
    the data set, or above the folder that holds it. Only computed for an error."""
    for up in (root, *list(root.parents)[:3]):
        if up.name in tops:
            return f"; {root} is inside the data set: use --data-root {up.parent}"
    found: list[Path] = []
    for pattern in ("*", "*/*"):
        try:
            found += [d for d in root.glob(pattern) if d.name.lower() == tops[0].lower()]
        except OSError:
            break
    found = [d for d in found if d.is_dir() and _visible(d.parent)]
    if len(found) == 1 and found[0].name != tops[0]:
        return f"; found {found[0]}: rename it to {tops[0]} (the name is case-sensitive)"
    if found:
        return f"; found {found[0]}: use --data-root {found[0].parent}"
    return ""


def _banded(
    ds: str, root: Path, top: str, bands: list[str], vein: str, ext: str, width: int, sample: str
):
    base = _base(root, top)
    if not base.is_dir():
        raise layout_error(ds, root, f"missing folder {base}{_where(root, (top, *bands, vein))}")
    folders = {b: base / b for b in [*bands, vein]}
    missing = [str(p) for p in folders.values() if not p.is_dir()]
    if missing:
        raise layout_error(ds, root, f"missing folder(s) {', '.join(missing)}")
    name = f"{'I' * width}_{'S' * len(sample)}{ext}"
    files = {b: _pairs(ds, root, folders[b], ext, name) for b in folders}
    if not files[bands[0]]:
        raise layout_error(ds, root, f"no {name} images in {folders[bands[0]]}")
    # a capture in any band: one short of the first band was left out without a word
    keys = sorted(set().union(*files.values()))
    # every gap at once: a download missing a few files is fixed in one go, not one per run
    lost = [(key, b) for key in keys for b in folders if key not in files[b]]
    if lost:
        shown = first_few(
            f"{b}/{next(f[key] for f in files.values() if key in f).name}" for key, b in lost
        )
        raise layout_error(
            ds,
            root,
            f"{len(lost)} capture(s) lack an image in a band folder ({shown}); delete "
            f"those captures' other band images or restore the missing ones",
        )
    records = []
    for key in keys:
        pf = tuple(files[b][key] for b in bands)
        records.append(Record(f"{key[0]:0{width}d}", key[1], pf, files[vein][key]))
    return records


def _tjppv(root: Path) -> list[Record]:
    tops = ("Tongji_jpg", "Palmvein_ROI_gray_128x128")
    base = root.parent if root.name in tops else root  # either folder, as Casia_M for casiam
    prints, veins = (base / t for t in tops)
    for p in (prints, veins):
        if not p.is_dir():
            raise layout_error("tjppv", root, f"missing folder {p}{_where(root, tops)}")
    files = _pairs("tjppv", root, prints, ".jpg", "IIII_SSSS.jpg")
    if not files:
        raise layout_error("tjppv", root, f"no IIII_SSSS.jpg images in {prints}")
    sessions = {
        s: {f.stem: f for f in _files(veins / f"session{s}", (".bmp",))}
        for s in (1, 2)
        if (veins / f"session{s}").is_dir()
    }
    others = [
        n for s in (1, 2) for n in _other_kinds(veins / f"session{s}", (".bmp",), f"session{s}/")
    ]
    _warn_other_kinds("tjppv", veins, others, (".bmp",))
    records, lost = [], []
    for (i, j), f in sorted(files.items()):
        session, n = (1, j) if j <= 10 else (2, j - 10)
        v = sessions.get(session, {}).get(f"{(i - 1) * 10 + n:05d}")
        if v is None:
            lost.append(f"{f.name}: session{session}/{(i - 1) * 10 + n:05d}.bmp")
        else:
            records.append(Record(f"{i:04d}", j, (f,), v))
    if lost:
        # every gap at once, as for the banded layouts: not one per run
        raise layout_error(
            "tjppv", root, f"{len(lost)} print(s) have no vein image in {veins} "
            f"({first_few(lost)}); delete those prints or restore the vein images"
        )  # fmt: skip
    return records


def _images(folder: Path) -> list[tuple[int, Path]]:
    """Images of one identity folder with their sample keys: the number a name ends with (so
    that 10 sorts after 9), else the position in name order."""
    files = sorted(_files(folder, _IMAGE_EXT))
    numbers = [_TRAILING.search(f.stem) for f in files]
    if all(numbers) and len({int(m[1]) for m in numbers}) == len(files):
        return sorted((int(m[1]), f) for m, f in zip(numbers, files, strict=True))
    return [(n + 1, f) for n, f in enumerate(files)]


def _warn_empty(ds: str, empty: list[str], where: Path) -> None:
    """An identity folder without images would otherwise be left out without a word."""
    if empty:
        logger.warning(
            "data set %r: %d identity folder(s) in %s hold no %s images and are left out: %s",
            ds, len(empty), where, "/".join(e[1:] for e in _IMAGE_EXT), first_few(empty),
        )  # fmt: skip


def _iitd(root: Path) -> list[Record]:
    base = _base(root, "IITD")
    if not base.is_dir():
        raise layout_error("iitd", root, f"missing folder {base}{_where(root, ('IITD',))}")
    records, empty, others = [], [], []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and _visible(p)):
        found = [Record(d.name, n, (f,), None) for n, f in _images(d)]
        records += found
        empty += [] if found else [d.name]
        others += _other_kinds(d, _IMAGE_EXT, f"{d.name}/")
    _warn_other_kinds("iitd", base, others, _IMAGE_EXT)
    if records:
        _warn_empty("iitd", empty, base)
    if not records:
        raise layout_error("iitd", root, f"no identity folders with images in {base}")
    return records


def _vein_for(print_file: Path, vein_dir: Path) -> Path | None:
    if vein_dir.is_dir():
        for v in sorted(_files(vein_dir, _IMAGE_EXT)):
            if v.stem == print_file.stem:
                return v
    return None


def _generic(root: Path) -> list[Record]:
    prints, veins = root / "print", root / "vein"
    if not prints.is_dir():
        where = _where(root, ("print", "vein"))
        raise layout_error("generic", root, f"missing folder {prints}{where}")
    if not veins.is_dir():
        # optional, but a folder named Vein or veins would leave out three modes without a word
        others = [
            p.name for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("vein")
        ]
        logger.warning(
            "data set 'generic' at %s has no folder %s: print only, the vein, multi and cross "
            "modes are neither trained nor evaluated%s",
            root, veins, f" (found {', '.join(sorted(others))}: rename it vein)" if others else "",
        )  # fmt: skip
    records, empty, lost, others = [], [], [], []
    for d in sorted(p for p in prints.iterdir() if p.is_dir() and _visible(p)):
        images = _images(d)
        empty += [] if images else [d.name]
        others += _other_kinds(d, _IMAGE_EXT, f"print/{d.name}/")
        for n, f in images:
            v = _vein_for(f, veins / d.name) if veins.is_dir() else None
            if veins.is_dir() and v is None:
                lost.append(f"{d.name}/{f.name}")
            records.append(Record(d.name, n, (f,), v))
    if veins.is_dir():
        for d in sorted(p for p in veins.iterdir() if p.is_dir() and _visible(p)):
            others += _other_kinds(d, _IMAGE_EXT, f"vein/{d.name}/")
    _warn_other_kinds("generic", root, others, _IMAGE_EXT)
    if lost:
        # every gap at once, as for the banded layouts: not one per run
        raise layout_error(
            "generic", root, f"{len(lost)} print(s) in {prints} have no vein image of the same "
            f"name in {veins} ({first_few(lost)}); delete those prints or restore "
            "the vein images"
        )  # fmt: skip
    if records:
        _warn_empty("generic", empty, prints)
    if records and veins.is_dir():
        named = {r.identity for r in records}
        alone = sorted(p.name for p in veins.iterdir() if p.is_dir() and _visible(p))
        alone = [name for name in alone if name not in named and name not in empty]
        if alone:
            logger.warning(
                "data set 'generic': %d identity folder(s) in %s have no print folder with "
                "images in %s and are left out: %s",
                len(alone), veins, prints, first_few(alone),
            )  # fmt: skip
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
        records = _banded(ds, root, "MS_PolyU", bands, "NIR_ind", ".jpg", 4, "SSSS")
    elif ds == "casiam":
        bands = ["casia_700", "casia_460", "casia_460"]
        records = _banded(ds, root, "Casia_M", bands, "casia_850", ".jpg", 3, "SS")
    elif ds == "tjppv":
        records = _tjppv(root)
    elif ds == "iitd":
        records = _iitd(root)
    else:
        records = _generic(root)
    return sorted(records, key=lambda r: (r.identity, r.sample))
