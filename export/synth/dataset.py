"""Whole synthetic sets: in memory (arrays) or on disk (a layout), one identity per task.

Work is split by identity, so each hand's tree is grown once for all its samples. Processes are
started with ``spawn``: OpenCV's thread pool deadlocks in a child forked after the parent used
it. Results come back in identity order (a worker that dies raises BrokenProcessPool rather than
hanging), and every capture has its own seeded stream, so the bytes are the same for any number
of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.synth.identity import make_identity
from export.synth.layouts import expected_files, get_layout, write_capture
from export.synth.levels import Level, get_level
from export.synth.render import DEFAULT_BANDS, render_capture
from export.text import first_few

logger = logging.getLogger(__name__)

ROI_SIZE = 128


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _map(fn: Callable[[int], Any], items: Iterable[int], workers: int) -> Iterator[Any]:
    """In order; ``workers`` <= 1 runs here, more runs that many processes."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        yield from pool.map(fn, items)


def _identity_arrays(
    i: int, samples: int, level: Level, seed: int, bands: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    ident = make_identity(i, seed, level)
    caps = [
        render_capture(ident, j, seed, level, ROI_SIZE, band_names=bands) for j in range(samples)
    ]
    return np.stack([c.print_roi for c in caps]), np.stack([c.vein_roi for c in caps])


def generate_arrays(
    ids: int,
    samples: int,
    level: str | Level,
    seed: int,
    print_bands: int = 1,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(print (ids, samples, 128, 128[, bands]), vein (ids, samples, 128, 128)), both uint8.

    Row ``i`` is ``make_identity(i, seed, level)``, column ``j`` its capture ``j``.
    """
    lv = get_level(level)
    bands = DEFAULT_BANDS.get(print_bands)
    if bands is None:
        raise ValueError(f"print_bands must be one of {sorted(DEFAULT_BANDS)}, got {print_bands}")
    fn = partial(_identity_arrays, samples=samples, level=lv, seed=seed, bands=bands)
    results = list(_map(fn, range(ids), workers))
    return np.stack([p for p, _ in results]), np.stack([v for _, v in results])


def _identity_files(i: int, root: Path, layout: str, samples: int, level: Level, seed: int) -> int:
    lay = get_layout(layout, samples)
    ident = make_identity(i, seed, level)
    n = 0
    for j in range(samples):
        cap = render_capture(ident, j, seed, level, ROI_SIZE, band_names=lay.bands)
        n += len(write_capture(root, lay, i + 1, j + 1, cap.print_roi, cap.vein_roi))
    return n


def _tops(layout: str) -> set[str]:
    """The folders a layout writes directly under the root (Casia_M; print and vein)."""
    return {rel.split("/")[0] for rel, _ in get_layout(layout).files(1, 1)}


def _clear_earlier(root: Path, layout: str) -> None:
    """Delete the files of the synthetic set an earlier run wrote in ``root``, as its
    ``synth.json`` records them: written over, those of identities and samples beyond the new
    counts stayed and loaded as part of the new set (a --seed 0 hand among --seed 1 captures of
    the same name). Any other file in the layout's folders (a real data set?) would mix with the
    new set the same way: refused, before anything is deleted."""
    stamp = root / "synth.json"
    earlier: set[Path] = set()
    if stamp.is_file():
        try:
            meta = json.loads(stamp.read_text())
            old = meta["layout"]
            names = expected_files(old, int(meta["ids"]), int(meta["samples"]))
            earlier = {root / rel for rel in names}
        except (ValueError, KeyError, TypeError):
            earlier = set()
    tops = [
        root / t for t in sorted(_tops(layout) | {p.relative_to(root).parts[0] for p in earlier})
    ]
    others = [
        f for t in tops if t.is_dir() for f in t.rglob("*") if f.is_file() and f not in earlier
    ]
    if others:
        raise FileExistsError(
            f"{root} holds files that no synthetic set written there had "
            f"({first_few(others, 3)}): a real data set? Written over, they "
            "would mix with the new set; pass an empty or new --out"
        )
    for f in earlier:
        f.unlink(missing_ok=True)
    for t in tops:
        if t.is_dir():
            for d in sorted((p for p in t.rglob("*") if p.is_dir()), reverse=True):
                d.rmdir()
            t.rmdir()
    if earlier:
        stamp.unlink()
        logger.info("synth replaces the synthetic set in %s", root)


def write_dataset(
    layout: str,
    out_dir: Path,
    ids: int,
    samples: int,
    level: str | Level,
    seed: int,
    workers: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write ``ids`` × ``samples`` captures in ``layout`` under ``out_dir``; returns ``out_dir``.

    ``out_dir`` is the root the loaders take: it holds the layout's top folders (e.g.
    ``MS_PolyU/``) and ``synth.json``, which records how the set was made. ``progress`` wraps
    the per-identity iterator (the CLI passes a tqdm bar).
    """
    lv = get_level(level)
    get_layout(layout, samples)  # fail before any work on a bad layout or sample count
    root = Path(out_dir)
    _clear_earlier(root, layout)
    root.mkdir(parents=True, exist_ok=True)
    fn = partial(_identity_files, root=root, layout=layout, samples=samples, level=lv, seed=seed)
    results: Iterable[int] = _map(fn, range(ids), workers)
    if progress is not None:
        results = progress(results)
    n_files = sum(results)
    meta = {"layout": layout, "ids": ids, "samples": samples, "seed": seed, "level": lv.to_dict()}
    (root / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    logger.info(
        "synth written layout=%s ids=%d samples=%d files=%d root=%s",
        layout,
        ids,
        samples,
        n_files,
        root,
    )
    return root
