"""A data set in memory: every ROI decoded once, resized to the network's input size, as uint8.

Both the file layouts and the synthetic generator end here, so training, evaluation and the
exporter all see one structure. Bands stay as captured (a grey vein image is (S, S, 1)); the
repetition to 3 channels and the normalisation happen per sample in agent.preprocess.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.preprocess import DEFAULT_SPEC, PreprocessSpec, to_channels
from export.data.layouts import LayoutError, Record, layout_error, scan
from export.text import first_few

logger = logging.getLogger(__name__)


@dataclass
class PalmArrays:
    """print (N, S, S, Cp) uint8, vein (N, S, S, 1) uint8 or None, labels (N,) int64 index into
    ``identities`` (sorted names), samples (N,) each capture's sample key within its identity."""

    print: np.ndarray
    vein: np.ndarray | None
    labels: np.ndarray
    identities: list[str]
    samples: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> PalmArrays:
        return PalmArrays(
            self.print[rows],
            None if self.vein is None else self.vein[rows],
            self.labels[rows],
            self.identities,
            self.samples[rows],
        )


def _jpeg_cut_short(path: Path) -> bool:
    """A JPEG cut short decodes without an error (libjpeg only prints "Premature end of JPEG
    file", naming no file), its missing rows a flat grey that trained as if captured. Its
    image data, after the last start-of-scan marker, then lacks the end-of-image marker: in
    the coded data a 0xFF byte is never followed by 0xD9 or 0xDA (it is stuffed with 0x00)."""
    data = path.read_bytes()
    if not data.startswith(b"\xff\xd8"):
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _read(path: Path, size: int, spec: PreprocessSpec) -> np.ndarray | None:
    """The ROI as uint8 grey, resized; None where the file is no image OpenCV can decode (an
    empty or cut-short download)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0 or _jpeg_cut_short(path):
        return None
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return to_channels(img, dataclasses.replace(spec, input_size=size, channels=1))[..., 0]


def from_records(
    records: list[Record], spec: PreprocessSpec = DEFAULT_SPEC, workers: int = 4
) -> PalmArrays:
    from tqdm import tqdm

    size = spec.input_size
    files = [f for r in records for f in (*r.print_files, *([r.vein_file] if r.vein_file else []))]
    files = list(dict.fromkeys(files))  # casiam's 460 nm band is two of the print's channels
    logger.info("loading images=%d captures=%d", len(files), len(records))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        read = pool.map(lambda f: _read(f, size, spec), files)
        # a real set is thousands of files, read at the speed of the disk: the bar shows it
        bar = tqdm(read, "loading", total=len(files), unit="img", leave=False, file=sys.stderr)
        decoded = dict(zip(files, bar, strict=True))
    bad = [str(f) for f, img in decoded.items() if img is None]
    if bad:
        raise LayoutError(
            f"{len(bad)} file(s) are not images that can be read ({first_few(bad)}): "
            "an empty or cut-short download, or another kind of file under an image name. "
            "Download them again, or delete them with the same capture's other band or vein "
            "images"
        )
    prints = np.stack([np.stack([decoded[f] for f in r.print_files], -1) for r in records])
    veins = None
    if records[0].vein_file is not None:
        veins = np.stack([decoded[r.vein_file] for r in records])[..., None]
    identities = sorted({r.identity for r in records})
    index = {name: i for i, name in enumerate(identities)}
    labels = np.array([index[r.identity] for r in records], dtype=np.int64)
    samples = np.array([r.sample for r in records], dtype=np.int64)
    logger.info("loaded images=%d identities=%d", len(records), len(identities))
    return PalmArrays(prints, veins, labels, identities, samples)


def load_dataset(
    ds: str, root: str | Path, spec: PreprocessSpec = DEFAULT_SPEC, workers: int = 4
) -> PalmArrays:
    """Scan and decode a data set; a root whose images do not pair up raises LayoutError."""
    records = scan(ds, root)
    if len({r.vein_file is None for r in records}) > 1:
        raise layout_error(ds, Path(root), "some captures have a vein image and some do not")
    return from_records(records, spec, workers)


def from_synth(print_arr: np.ndarray, vein_arr: np.ndarray | None) -> PalmArrays:
    """Arrays (ids, samples, S, S[, bands]) from export.synth.generate_arrays -> PalmArrays."""
    n_ids, n_samples = print_arr.shape[:2]
    p = print_arr.reshape(n_ids * n_samples, *print_arr.shape[2:])
    if p.ndim == 3:
        p = p[..., None]
    v = None
    if vein_arr is not None:
        v = vein_arr.reshape(n_ids * n_samples, *vein_arr.shape[2:])
        v = v[..., None] if v.ndim == 3 else v
    width = len(str(n_ids))
    return PalmArrays(
        np.ascontiguousarray(p),
        None if v is None else np.ascontiguousarray(v),
        np.repeat(np.arange(n_ids, dtype=np.int64), n_samples),
        [f"{i + 1:0{width}d}" for i in range(n_ids)],
        np.tile(np.arange(1, n_samples + 1, dtype=np.int64), n_ids),
    )
