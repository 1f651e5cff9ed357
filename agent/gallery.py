"""The enrolled gallery in memory: packed codes per modality, searched by popcount(XOR).

Why several paths: for a handful of codes the numpy call overhead (a few hundred ns per ufunc)
dwarfs the work, and Python ints with ``int.bit_count`` win; above ``INT_CROSSOVER`` codes (set
from ``bench/match.py``) one preallocated, cache-sized chunk at a time is XORed and counted.
Top-1 is one argmin on the uint8 counts. Top-k of a small gallery writes the counts into the top
byte of uint32 keys whose low 24 bits hold the index, so one SIMD partition (or sort) of the keys
orders by distance and then index; larger galleries take k argmins per chunk and skip chunks that
cannot beat the k found so far. Ties go to the lower gallery index on every path, so all agree.

Buffers are preallocated per gallery, so one gallery must not be searched from two threads.
:class:`StoreGallery` reloads from the template store whenever the store's change counter moves.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from agent import codes

if TYPE_CHECKING:
    from agent.store import TemplateStore

MODALITIES = ("print", "vein")
INT_CROSSOVER = 12  # codes; below this Python ints are faster (bench/match.py, 32-bit, k=1)
CHUNK = 131072  # codes per chunk for one probe (bench/match.py: 64K-128K are fastest here)
BATCH_ELEMS = 262144  # probe x code pairs per chunk of a batch search
BATCH_2D_MAX = 16384  # above this many codes a batch is searched one probe at a time
KEY_SORT_MAX = 64  # top-k: up to this many codes per chunk, one sort of packed keys
KEY_SELECT_MAX = 2048  # top-k: up to this many, a partition of packed keys (above: argmins)
_KEY_MASK = (1 << 24) - 1
_U32_SHIFT, _U32_MASK = np.uint32(24), np.uint32(_KEY_MASK)  # numpy scalars: cheaper ufunc calls
_KEY_SHIFT = 24  # a batch key is distance << 24 | index within the chunk
_KEY_BYTE = 3 if sys.byteorder == "little" else 0  # the byte of a uint32 key holding bits 24..31


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
        self._batch: tuple | None = None  # the last batch shape's buffers (_batch_buffers)

    def __len__(self) -> int:
        return self._n

    def index_of(self, label: str) -> int | None:
        return self._index.get(label)

    def distances(self, probe: np.ndarray) -> np.ndarray:
        """Distances from one probe to every template, (n,) int32."""
        return codes.hamming(probe, self.codes)

    def distance_to(self, label: str, probe: np.ndarray) -> int | None:
        """1:1 distance to one subject's template (None when not enrolled in this modality)."""
        i = self._index.get(label)
        if i is None:
            return None
        return codes.hamming_int(codes.to_int(probe), codes.to_int(self.codes[i]))

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

        Small galleries: each chunk is compared with every probe at once (fewer numpy calls
        than a probe at a time); per chunk the k best of each row are kept, and one sort
        merges the chunks' candidates.
        """
        p = self._words(probes).reshape(-1, self.words)
        b, n = len(p), self._n
        k = max(0, min(k, n))
        if k == 0 or b == 0:
            return np.zeros((b, k), dtype=np.int64), np.zeros((b, k), dtype=np.int32)
        if n > BATCH_2D_MAX:
            # large galleries: the 1-D kernels (contiguous XOR with a scalar) are faster than
            # a broadcast 2-D one, and a probe's pass over a chunk already amortises the calls
            found = [self.search(row, k) for row in p]
            return (
                np.array([[i for i, _ in f] for f in found], dtype=np.int64),
                np.array([[d for _, d in f] for f in found], dtype=np.int32),
            )
        step = max(1, min(n, BATCH_ELEMS // b, 1 << _KEY_SHIFT))
        bufs = self._batch_buffers(b, step)
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
        rows = bufs[5][:, None]
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

    def _batch_buffers(self, b: int, step: int) -> tuple:
        """(b, step) work buffers, kept while the batch shape repeats (as it does in a daemon).

        ``keys`` is uint32 with each column's index preset in its low 24 bits; ``top`` is the
        view of its high byte, where the distances go, so one sort orders by distance and then
        by index and the index bits are never rewritten.
        """
        if self._batch is not None and self._batch[:2] == (b, step):
            return self._batch[2:]
        xor = np.empty((b, step), dtype=self._dtype)
        cnt = np.empty((b, step), dtype=np.uint8)
        tmp = np.empty((b, step), dtype=np.uint8) if self.words > 1 else None
        keys = np.empty((b, step), dtype=np.uint32)
        keys[:] = np.arange(step, dtype=np.uint32)
        top = keys.view(np.uint8).reshape(b, step, 4)[:, :, _KEY_BYTE]
        rows = np.arange(b)
        self._batch = (b, step, xor, cnt, tmp, keys, top, rows, cnt.reshape(-1), rows * step)
        return self._batch[2:]

    def _batch_chunk(
        self, p: np.ndarray, s: int, e: int, k: int, bufs: tuple
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each probe among codes s..e: (b, k) int64 indices and distances."""
        xor, cnt, tmp, keys, top, _, flat, offs = bufs  # flat[offs + j] is cnt[row, j]
        m = e - s
        kk = min(k, m)
        use_keys = kk > 1 and m <= KEY_SELECT_MAX
        if m != xor.shape[1]:
            xor, cnt, keys, top = xor[:, :m], cnt[:, :m], keys[:, :m], top[:, :m]
            tmp = None if tmp is None else tmp[:, :m]
        out = top if use_keys else cnt
        whole = m == self._n
        for w in range(self.words):
            col = self._cols[w] if whole else self._cols[w][s:e]
            np.bitwise_xor(col, p if self.words == 1 else p[:, w, None], out=xor)
            if w == 0:
                np.bitwise_count(xor, out=out)
            else:
                np.bitwise_count(xor, out=tmp)
                np.add(out, tmp, out=out)
        if kk == 1:
            i = cnt.argmin(axis=1)
            d = flat[i + offs][:, None]
            i = i[:, None]
        elif use_keys:
            if m <= KEY_SORT_MAX:
                best = np.sort(keys, axis=1)[:, :kk]
            else:
                best = np.sort(np.partition(keys, kk - 1, axis=1)[:, :kk], axis=1)
            best = np.ascontiguousarray(best)  # a strided view makes each ufunc call dearer
            d = best >> _U32_SHIFT
            i = (best & _U32_MASK).astype(np.int64)
        else:
            i = np.empty((len(p), kk), dtype=np.int64)
            d = np.empty((len(p), kk), dtype=np.uint8)
            for j in range(kk):  # argmin returns the lowest index among equal distances
                at = cnt.argmin(axis=1) + offs
                i[:, j] = at - offs
                d[:, j] = flat[at]
                flat[at] = 255  # taken; the next argmin finds the next best
        if s:
            i += s
        return i, d

    def _words(self, probe: np.ndarray) -> np.ndarray:
        arr = np.asarray(probe)
        if arr.dtype != self.codes.dtype:
            raise ValueError(
                f"probe dtype {arr.dtype} is not {self.codes.dtype}, the word type of "
                f"{self.bits}-bit codes; pack probes with agent.codes.pack"
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
