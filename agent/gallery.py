"""The enrolled gallery in memory: packed codes per modality, searched by popcount(XOR).

Where the C extension ``agent._hamming`` was built (``setup.py``; it is optional), one fused
pass over the codes does XOR, popcount and top-k selection: numpy needs several calls per chunk
and counts 32/64-bit words with scalar code, so it loses to faiss at small N and takes ~100 us
at N = 1e5, where the kernel takes ~16 us (bench/match.py). ``KERNEL`` says which is in use.
The numpy paths below remain the fallback for an install without a C compiler, and ties go to
the lower index on both.

Why several numpy paths: for a handful of codes the numpy call overhead (a few hundred ns per ufunc)
dwarfs the work, and Python ints with ``int.bit_count`` win; above ``INT_CROSSOVER`` codes (set
from ``bench/match.py``) one preallocated, cache-sized chunk at a time is XORed and counted.
Top-1 is one argmin on the uint8 counts. Top-k of a small gallery writes the counts into the top
byte of uint32 keys whose low 24 bits hold the index, so one SIMD partition (or sort) of the keys
orders by distance and then index; larger galleries take k argmins per chunk and skip chunks that
cannot beat the k found so far. A batch of probes counts each (probes, codes) chunk per byte
(numpy's popcount is SIMD on bytes only) and sums a word's byte counts with one multiply; its
top-k are k argmins with the taken ones marked. Ties go to the lower gallery index on every path,
so all agree.

Buffers are preallocated per gallery, so one gallery must not be searched from two threads.
:class:`StoreGallery` reloads from the template store whenever the store's change counter moves.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from agent import codes
from agent.manifest import MODALITIES

if TYPE_CHECKING:
    from agent.store import TemplateStore

try:
    from agent import _hamming
except ImportError:  # built without a C compiler: the numpy paths serve
    _hamming = None

KERNEL = "numpy" if _hamming is None else "c"
logging.getLogger(__name__).debug(
    "1:N matcher kernel: %s", KERNEL if _hamming is None else f"c ({_hamming.impl()})"
)

NUMPY_INT_CROSSOVER = 12  # codes; below this Python ints beat numpy (bench/match.py, 32-bit, k=1)
INT_CROSSOVER = NUMPY_INT_CROSSOVER if _hamming is None else 0  # ints never beat the C kernel
CHUNK = 131072  # codes per chunk for one probe (bench/match.py: 64K-128K are fastest here)
BATCH_ELEMS = 1 << 20  # probe x code pairs per chunk of a batch search (fewer merges win)
BATCH_2D_MAX = 16384  # above this many codes a batch is searched one probe at a time
BATCH_SMALL_MAX = 128  # up to this many codes a batch takes _batch_small (bench/match.py)
BATCH_BYTES_MIN = 2048  # batch top-k: from this many codes per chunk, argmins on uint8 copies
BATCH_BUFSIZE = 256  # numpy ufunc buffer (elements) during a 2-D batch search, see search_batch
KEY_SORT_MAX = 64  # one probe's top-k: up to this many codes per chunk, one sort of packed keys
KEY_SELECT_MAX = 2048  # one probe's top-k: up to this many, a partition of keys (above: argmins)
_KEY_MASK = (1 << 24) - 1
_KEY_SHIFT = 24  # a one-probe key is distance << 24 | index
_KEY_BYTE = 3 if sys.byteorder == "little" else 0  # the byte of a uint32 key holding bits 24..31
_U32_SHIFT, _U32_MASK = np.uint32(24), np.uint32(_KEY_MASK)  # numpy scalars: cheaper ufunc calls


class PackedGallery:
    """One modality's templates: ``labels[i]`` owns packed code ``codes[i]``."""

    def __init__(self, labels: Sequence[str], packed: np.ndarray, bits: int) -> None:
        dtype = codes.word_dtype(bits)
        self.bits = bits
        self.words = codes.n_words(bits)
        self.labels = list(labels)
        self.codes = np.ascontiguousarray(np.asarray(packed, dtype=dtype).reshape(-1, self.words))
        if len(self.labels) != len(self.codes):
            raise ValueError(f"{len(self.labels)} labels for {len(self.codes)} codes")
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._cols = [np.ascontiguousarray(self.codes[:, w]) for w in range(self.words)]
        self._dtype = self.codes.dtype
        n = self._n = len(self.codes)
        self._ints = [codes.to_int(c) for c in self.codes] if n < INT_CROSSOVER else None
        self._chunk = max(1, CHUNK)
        m = max(1, min(n, self._chunk))
        self._xor = np.empty(m, dtype=dtype)
        self._cnt = np.empty(m, dtype=np.uint8)
        self._tmp = np.empty(m, dtype=np.uint8) if self.words > 1 else None
        self._keys: tuple | None = None  # one probe's packed keys (_key_buffers)
        self._batch: tuple | None = None  # the last batch shape's buffers
        # x * 0x01..01 sums the byte counts of a word into its top byte (_batch_distances)
        self._byte_ones = dtype.type(int("01" * dtype.itemsize, 16))
        self._top_shift = dtype.type(8 * dtype.itemsize - 8)

    def __len__(self) -> int:
        return self._n

    def index_of(self, label: str) -> int | None:
        return self._index.get(label)

    def distances(self, probe: np.ndarray) -> np.ndarray:
        """Distances from one probe to every template, (n,) int32."""
        return codes.hamming(self._words(probe, one=True), self.codes)

    def distance_to(self, label: str, probe: np.ndarray) -> int | None:
        """1:1 distance to one subject's template (None when not enrolled in this modality)."""
        i = self._index.get(label)
        if i is None:
            return None
        p = codes.to_int(self._words(probe, one=True))
        return codes.hamming_int(p, codes.to_int(self.codes[i]))

    def search(self, probe: np.ndarray, k: int = 1) -> list[tuple[int, int]]:
        """The k nearest templates as (index, distance), ascending by distance then index.

        Kept lean on purpose: at a thousand codes the numpy work is about a microsecond, so
        each extra slice or call on this path shows in ``bench/match.py`` against faiss.
        """
        n = self._n
        if k > n:
            k = n
        if k <= 0:
            return []
        if self._ints is not None:
            p = codes.to_int(probe)
            d = [(p ^ c).bit_count() for c in self._ints]
            if k == 1:
                m = min(d)
                return [(d.index(m), m)]
            return [(i, d[i]) for i in sorted(range(n), key=d.__getitem__)[:k]]
        if probe.dtype != self._dtype:
            self._words(probe)  # raises, saying how to pack the probe
        if _hamming is not None:
            return _hamming.topk(self.codes, probe, k)
        words = probe if probe.ndim == 1 else probe.reshape(-1)
        if n > self._chunk:
            return self._search_chunks(words, k)
        if k > 1 and n <= KEY_SELECT_MAX:
            return self._search_keys(words, k)
        if self.words == 1:  # the buffers hold exactly n codes here: no slicing
            np.bitwise_xor(self._cols[0], words, out=self._xor)
            cnt = np.bitwise_count(self._xor, out=self._cnt)
        else:
            cnt = self._counts(words, 0, n)
        if k == 1:
            i = cnt.argmin()
            return [(int(i), cnt.item(i))]
        return self._take(cnt, k, 0)

    def search_batch(self, probes: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for b probes at once: (b, k) int64 indices and int32 distances.

        Up to ``BATCH_SMALL_MAX`` codes the call overhead dominates and the fewest calls win.
        Up to ``BATCH_2D_MAX`` codes each chunk is compared with every probe at once (counted
        per byte, see :meth:`_batch_distances`), the k best of each row are kept by argmins, and
        one sort merges the chunks' candidates; above it a probe at a time is faster.
        """
        p = self._words(probes).reshape(-1, self.words)
        b, n = len(p), self._n
        k = max(0, min(k, n))
        if k == 0 or b == 0:
            return np.zeros((b, k), dtype=np.int64), np.zeros((b, k), dtype=np.int32)
        if _hamming is not None:
            i, d = np.empty((b, k), dtype=np.int64), np.empty((b, k), dtype=np.int32)
            _hamming.topk_batch(self.codes, p, i, d)
            return i, d
        if n <= BATCH_SMALL_MAX:
            return self._batch_small(p, k)
        if n > BATCH_2D_MAX:
            # large galleries: the 1-D kernels (contiguous XOR with a scalar) are faster than
            # a broadcast 2-D one, and a probe's pass over a chunk already amortises the calls
            found = [self.search(row, k) for row in p]
            return (
                np.array([[i for i, _ in f] for f in found], dtype=np.int64),
                np.array([[d for _, d in f] for f in found], dtype=np.int32),
            )
        with np.errstate():  # restores the ufunc buffer size on exit
            # numpy copies a broadcast operand through its ufunc buffer whenever a row is
            # shorter than that buffer; a small buffer keeps the probe broadcast unbuffered
            # (bench: (64, 1000) XOR 0.5 -> 0.2 ns per pair)
            np.setbufsize(BATCH_BUFSIZE)
            return self._batch_chunks(p, k)

    def _batch_small(self, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Small galleries, where each numpy call costs more than its work: top-1 is one argmin
        of the uint8 counts; top-k writes the counts into the top byte of index-preset uint32
        keys, so one sort orders by distance and then index."""
        b, n = len(p), self._n
        if self._batch is None or self._batch[:2] != ("small", b):
            keys = np.empty((b, n), dtype=np.uint32)
            keys[:] = np.arange(n, dtype=np.uint32)
            top = keys.view(np.uint8).reshape(b, n, 4)[:, :, _KEY_BYTE]
            cnt = np.empty((b, n), dtype=np.uint8)
            tmp = np.empty((b, n), dtype=np.uint8) if self.words > 1 else None
            x = np.empty((b, n), dtype=self._dtype)
            self._batch = ("small", b, x, cnt, tmp, keys, top, np.arange(b) * n)
        x, cnt, tmp, keys, top, offs = self._batch[2:]
        out = cnt if k == 1 else top
        for w in range(self.words):
            np.bitwise_xor(self._cols[w], p[:, w, None], out=x)
            if w == 0:
                np.bitwise_count(x, out=out)
            else:
                np.bitwise_count(x, out=tmp)
                np.add(out, tmp, out=out)
        if k == 1:
            i = cnt.argmin(axis=1)
            return i[:, None], cnt.reshape(-1)[i + offs].astype(np.int32)[:, None]
        best = np.sort(keys, axis=1)[:, :k]
        return (best & _U32_MASK).astype(np.int64), (best >> _U32_SHIFT).astype(np.int32)

    def _batch_chunks(self, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        b, n = len(p), self._n
        step = max(1, min(n, BATCH_ELEMS // b))
        if self._batch is None or self._batch[:2] != (b, step):
            tmp = np.empty((b, step), dtype=self._dtype) if self.words > 1 else None
            x = np.empty((b, step), dtype=self._dtype)
            small = np.empty((b, step), dtype=np.uint8)
            self._batch = (b, step, x, tmp, small, np.arange(b) * step)
        bufs = self._batch[2:]
        if n <= step:
            i, d = self._batch_chunk(p, 0, n, k, bufs)
            return i, d.astype(np.int32)
        found_i, found_d = [], []
        for s in range(0, n, step):
            i, d = self._batch_chunk(p, s, min(n, s + step), k, bufs)
            found_i.append(i)
            found_d.append(d)
        all_i = np.concatenate(found_i, axis=1)
        all_d = np.concatenate(found_d, axis=1).astype(np.int32)
        order = np.lexsort((all_i, all_d), axis=1)[:, :k]
        rows = np.arange(b)[:, None]
        return all_i[rows, order], all_d[rows, order]

    def _search_keys(self, words: np.ndarray, k: int) -> list[tuple[int, int]]:
        """Top k of a small gallery: distances go into the top byte of index-preset keys, so
        one partition (SIMD on uint32) selects them, ties included, with no Python loop."""
        if self._keys is None:
            keys = np.arange(self._n, dtype=np.uint32)
            self._keys = keys, keys.view(np.uint8).reshape(-1, 4)[:, _KEY_BYTE]
        keys, top = self._keys
        for w in range(self.words):
            np.bitwise_xor(self._cols[w], words[w], out=self._xor)
            if w == 0:
                np.bitwise_count(self._xor, out=top)
            else:
                np.bitwise_count(self._xor, out=self._tmp)
                np.add(top, self._tmp, out=top)
        best = np.sort(keys) if self._n <= KEY_SORT_MAX else np.partition(keys, k - 1)
        # numpy leaves the order of the first k after a partition unspecified: sort them
        return [(v & _KEY_MASK, v >> _KEY_SHIFT) for v in sorted(best[:k].tolist())]

    def _batch_distances(self, p: np.ndarray, s: int, e: int, x: np.ndarray, tmp) -> None:
        """Distances of every probe to codes s..e, into the word-typed buffer ``x``.

        popcount of a whole word is scalar in numpy, of bytes it is SIMD (about 4x faster per
        byte here), so the bytes of each XOR are counted in place and one multiply by 0x01..01
        sums a word's byte counts into its top byte, which a shift brings down.
        """
        for w in range(self.words):
            out = x if w == 0 else tmp
            col = self._cols[w] if e - s == self._n else self._cols[w][s:e]
            np.bitwise_xor(col, p[:, w, None], out=out)
            counts = out.view(np.uint8)
            np.bitwise_count(counts, out=counts)
            np.multiply(out, self._byte_ones, out=out)
            np.right_shift(out, self._top_shift, out=out)
            if w:
                np.add(x, tmp, out=x)

    def _batch_chunk(
        self, p: np.ndarray, s: int, e: int, k: int, bufs: tuple
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each probe among codes s..e: (b, k) int64 indices and distances."""
        full, tmp, small, offs = bufs  # row r of a (b, step) buffer starts at offs[r] when flat
        m = e - s
        x = full[:, :m]
        self._batch_distances(p, s, e, x, None if tmp is None else tmp[:, :m])
        if k == 1:
            i = x.argmin(axis=1)
            return (i + s)[:, None], full.reshape(-1)[i + offs][:, None]
        if m >= BATCH_BYTES_MIN:  # an argmin over uint8 reads a quarter of the bytes
            np.copyto(small[:, :m], x, casting="unsafe")
            full = small
        sel, flat = full[:, :m], full.reshape(-1)
        kk = min(k, m)
        i = np.empty((len(p), kk), dtype=np.int64)
        d = np.empty((len(p), kk), dtype=full.dtype)
        for j in range(kk):  # argmin returns the lowest index among equal distances
            at = sel.argmin(axis=1) + offs
            i[:, j] = at
            d[:, j] = flat[at]
            flat[at] = 255  # taken (above any distance); the next argmin finds the next
        i -= (offs - s)[:, None]
        return i, d

    def _words(self, probe: np.ndarray, one: bool = False) -> np.ndarray:
        """The probe(s), checked: a code of another length or word type would be scored on bits
        the templates do not have. ``one``: a single probe, not a batch."""
        arr = np.asarray(probe)
        if arr.dtype != self.codes.dtype or (arr.size != self.words if one else
                                             arr.size % self.words):  # fmt: skip
            raise ValueError(
                f"probe of {arr.size} {arr.dtype} word(s) is not a {self.bits}-bit code "
                f"({self.words} {self.codes.dtype} word(s)); pack probes with agent.codes.pack"
            )
        return arr

    def _counts(self, words: np.ndarray, s: int, e: int) -> np.ndarray:
        """Distances of codes s..e to the probe, in the preallocated uint8 buffer."""
        m = e - s
        x, cnt = self._xor[:m], self._cnt[:m]
        np.bitwise_xor(self._cols[0][s:e], words[0], out=x)
        np.bitwise_count(x, out=cnt)
        for w in range(1, self.words):
            tmp = self._tmp[:m]
            np.bitwise_xor(self._cols[w][s:e], words[w], out=x)
            np.bitwise_count(x, out=tmp)
            np.add(cnt, tmp, out=cnt)
        return cnt

    @staticmethod
    def _take(cnt: np.ndarray, k: int, s: int) -> list[tuple[int, int]]:
        """The k smallest of ``cnt`` as (s + index, distance); marks them taken in ``cnt``."""
        best = []
        for _ in range(k):
            i = cnt.argmin()  # the lowest index among equal distances
            best.append((s + int(i), cnt.item(i)))
            cnt[i] = 255
        return best

    def _search_chunks(self, words: np.ndarray, k: int) -> list[tuple[int, int]]:
        n, chunk = self._n, self._chunk
        best: list[tuple[int, int]] = []  # (distance, index), sorted
        bound = self.bits + 1  # a candidate must be strictly below this once best is full
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            cnt = self._counts(words, s, e)
            i = cnt.argmin()  # argmin is SIMD, min is not
            d = cnt.item(i)
            if d >= bound:
                continue  # nothing here beats the k found so far
            if k == 1:
                best, bound = [(d, s + int(i))], d
                if d == 0:
                    break  # nothing later can beat it: ties go to the lower index
                continue
            for _ in range(min(k, e - s)):
                i = cnt.argmin()
                d = cnt.item(i)
                if d >= bound:
                    break
                bisect.insort(best, (d, s + int(i)))
                cnt[i] = 255  # taken; the next argmin finds the next candidate
                if len(best) > k:
                    best.pop()
                if len(best) == k:
                    bound = best[-1][0]
        return [(i, d) for d, i in best]


class Gallery:
    """Templates of both modalities, as probes must be compared against them.

    ``prepare_probe`` turns a raw probe code into the stored representation (identity here;
    the keyed transform for a :class:`StoreGallery`), so callers never see which it is.
    """

    def __init__(self, galleries: dict[str, PackedGallery]) -> None:
        self._galleries = dict(galleries)

    def get(self, modality: str) -> PackedGallery | None:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; use one of {MODALITIES}")
        return self._galleries.get(modality)

    def prepare_probe(self, probe: np.ndarray) -> np.ndarray:
        return probe


class StoreGallery(Gallery):
    """A gallery backed by a :class:`TemplateStore`, reloaded when the store changes."""

    def __init__(self, store: TemplateStore) -> None:
        super().__init__({})
        self.store = store
        self._version: int | None = None

    def refresh(self) -> bool:
        """Reload if the store changed since the last load; True when it did."""
        version = self.store.version()
        if version == self._version:
            return False
        loaded = {}
        for modality in MODALITIES:
            labels, packed = self.store.gallery(modality)
            if len(labels):
                loaded[modality] = PackedGallery(labels, packed, self.store.bits)
        self._galleries, self._version = loaded, version
        return True

    def get(self, modality: str) -> PackedGallery | None:
        self.refresh()
        return super().get(modality)

    def prepare_probe(self, probe: np.ndarray) -> np.ndarray:
        return self.store.protector.protect(probe)[0]
