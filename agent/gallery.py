"""The enrolled gallery in memory: packed codes per modality, searched by popcount(XOR).

Why two paths: for a handful of codes the numpy call overhead (a few microseconds per ufunc)
dwarfs the work, and Python ints with ``int.bit_count`` win; above ``INT_CROSSOVER`` codes (set
from ``bench/match.py``) one preallocated, cache-sized chunk at a time is XORed and counted, and
the k best are taken by repeated argmin on the chunk's uint8 counts (k is small), which beats a
partition or a sort. Ties go to the lower gallery index on both paths, so the two agree exactly.

Buffers are preallocated per gallery, so one gallery must not be searched from two threads.
:class:`StoreGallery` reloads from the template store whenever the store's change counter moves.
"""

from __future__ import annotations

import bisect
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
BATCH_2D_MAX = 4096  # above this many codes a batch is searched one probe at a time
SORT_BELOW = 2048  # up to this many codes a stable sort takes the top k faster than argmins


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
        n = len(self.codes)
        self._ints = [codes.to_int(c) for c in self.codes] if n < INT_CROSSOVER else None
        m = max(1, min(n, CHUNK))
        self._xor = np.empty(m, dtype=dtype)
        self._cnt = np.empty(m, dtype=np.uint8)
        self._tmp = np.empty(m, dtype=np.uint8) if self.words > 1 else None

    def __len__(self) -> int:
        return len(self.codes)

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
        """The k nearest templates as (index, distance), ascending by distance then index."""
        n = len(self.codes)
        k = min(k, n)
        if k <= 0:
            return []
        if self._ints is not None:
            p = codes.to_int(probe)
            d = [(p ^ c).bit_count() for c in self._ints]
            if k == 1:
                m = min(d)
                return [(d.index(m), m)]
            return [(i, d[i]) for i in sorted(range(n), key=d.__getitem__)[:k]]
        words = probe.reshape(-1) if probe.dtype == self.codes.dtype else self._words(probe)
        if k == 1 and n <= CHUNK:
            cnt = self._counts(words, 0, n)
            i = int(cnt.argmin())
            return [(i, int(cnt[i]))]
        if n <= SORT_BELOW:
            cnt = self._counts(words, 0, n)
            order = np.argsort(cnt, kind="stable")[:k]
            return list(zip(order.tolist(), cnt[order].tolist(), strict=True))
        return self._search_chunks(words, k)

    def search_batch(self, probes: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for b probes at once: (b, k) indices and distances.

        Small galleries: each chunk is compared with every probe at once (fewer numpy calls);
        per chunk the k best of each row are kept, and one sort merges the chunks' candidates.
        """
        p = self._words(probes).reshape(-1, self.words)
        b, n = len(p), len(self.codes)
        k = min(k, n)
        if n > BATCH_2D_MAX:
            # large galleries: the 1-D kernels (contiguous XOR with a scalar) are faster than
            # a broadcast 2-D one, and a probe's pass over a chunk already amortises the calls
            found = [self.search(row, k) for row in p]
            return (
                np.array([[i for i, _ in f] for f in found], dtype=np.int64),
                np.array([[d for _, d in f] for f in found], dtype=np.int32),
            )
        step = max(1, min(n, BATCH_ELEMS // max(1, b)))
        xor = np.empty((b, step), dtype=self.codes.dtype)
        cnt = np.empty((b, step), dtype=np.uint8)
        tmp = np.empty((b, step), dtype=np.uint8) if self.words > 1 else None
        rows = np.arange(b)[:, None]
        found_i, found_d = [], []
        for s in range(0, n, step):
            e = min(n, s + step)
            x, c = xor[:, : e - s], cnt[:, : e - s]
            for w in range(self.words):
                np.bitwise_xor(self._cols[w][None, s:e], p[:, w, None], out=x)
                if w == 0:
                    np.bitwise_count(x, out=c)
                else:
                    t = tmp[:, : e - s]
                    np.bitwise_count(x, out=t)
                    np.add(c, t, out=c)
            kk = min(k, e - s)
            if kk == 1:
                idx = c.argmin(axis=1)[:, None]
            elif e - s <= SORT_BELOW:
                idx = np.argsort(c, axis=1, kind="stable")[:, :kk]
            else:
                picks = []
                for _ in range(kk):
                    i = c.argmin(axis=1)[:, None]
                    picks.append((i, np.take_along_axis(c, i, axis=1).copy()))
                    np.put_along_axis(c, i, 255, axis=1)
                found_i += [i + s for i, _ in picks]
                found_d += [d for _, d in picks]
                continue
            found_i.append(idx + s)
            found_d.append(np.take_along_axis(c, idx, axis=1))
        all_i = np.concatenate(found_i, axis=1)
        all_d = np.concatenate(found_d, axis=1).astype(np.int32)
        if all_i.shape[1] > k:
            order = np.lexsort((all_i, all_d), axis=1)[:, :k]
            all_i, all_d = all_i[rows, order], all_d[rows, order]
        return all_i.astype(np.int64), all_d

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

    def _search_chunks(self, words: np.ndarray, k: int) -> list[tuple[int, int]]:
        n = len(self.codes)
        best: list[tuple[int, int]] = []  # (distance, index), sorted
        bound = self.bits + 1  # a candidate must be strictly below this once best is full
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            cnt = self._counts(words, s, e)
            if k == 1:
                i = int(cnt.argmin())
                d = int(cnt[i])
                if d < bound:
                    best, bound = [(d, s + i)], d
                    if d == 0:
                        break  # nothing later can beat it: ties go to the lower index
                continue
            if len(best) == k and int(cnt[cnt.argmin()]) >= bound:  # argmin is SIMD, min is not
                continue
            for _ in range(min(k, e - s)):
                i = int(cnt.argmin())
                d = int(cnt[i])
                if d >= bound:
                    break
                bisect.insort(best, (d, s + i))
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
