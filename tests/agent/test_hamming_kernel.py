"""The C kernel (agent._hamming) against a brute-force reference and the numpy fallback.

Every popcount variant the CPU offers is exercised here (``_hamming.use``), so the portable and
POPCNT paths are tested on an AVX2 machine too, and the fallback import is checked by loading
agent/gallery.py with the extension made unimportable.
"""

import importlib.util
import re
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent
from agent import codes, gallery

from .conftest import use_kernel

_hamming = pytest.importorskip("agent._hamming", reason="the C extension is not built")


def _available() -> list[str]:
    found = []
    previous = _hamming.impl()
    for name in ("avx2", "popcnt", "portable"):
        try:
            _hamming.use(name)
            found.append(name)
        except ValueError:
            pass
    _hamming.use(previous)
    return found


IMPLS = _available()


def _codes(rng, n, bits):
    return codes.pack_bits(rng.random((n, bits)) > 0.5).reshape(n, codes.n_words(bits))


def _gallery(rng, n, bits):
    """Half the codes drawn from a pool of 3, so ties (and ties at the k-th) are common."""
    pool = _codes(rng, 3, bits)
    g = np.concatenate([pool[rng.integers(0, 3, n // 2)], _codes(rng, n - n // 2, bits)])
    return np.ascontiguousarray(g), pool


def _reference(probe, gal, k):
    p = codes.to_int(probe)
    d = [(p ^ codes.to_int(c)).bit_count() for c in gal]
    return sorted((d[i], i) for i in range(len(d)))[:k]


def _numpy_topk(probe, gal, bits, k):
    """The numpy fallback's answer (the C path must agree with it exactly)."""
    with pytest.MonkeyPatch.context() as mp:
        use_kernel(mp, "numpy")
        return gallery.PackedGallery(range(len(gal)), gal, bits).search(probe, k)


@settings(max_examples=80, deadline=None)
@given(
    impl=st.sampled_from(IMPLS),
    bits=st.sampled_from(codes.SUPPORTED_BITS),
    n=st.sampled_from([1, 2, 4, 5, 6, 1023, 1024, 1025, 3000]),
    k=st.sampled_from([1, 5, 4000]),
    b=st.sampled_from([1, 3, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_topk_equals_brute_force_and_numpy(impl, bits, n, k, b, seed):
    # n around k (5) and the kernel's 1024-code sub-block; k above n returns all n
    rng = np.random.default_rng(seed)
    gal, pool = _gallery(rng, n, bits)
    probes = np.concatenate([pool, _codes(rng, b, bits)])[:b]
    kk = min(k, n)
    out_i, out_d = np.empty((b, kk), np.int64), np.empty((b, kk), np.int32)
    previous = _hamming.use(impl)
    try:
        assert _hamming.topk_batch(gal, probes, out_i, out_d) is None
        single = [_hamming.topk(gal, probe, k) for probe in probes]
    finally:
        _hamming.use(previous)
    for j, probe in enumerate(probes):
        ref = [(i, d) for d, i in _reference(probe, gal, k)]
        assert single[j] == ref
        assert list(zip(out_i[j].tolist(), out_d[j].tolist(), strict=True)) == ref
    assert _numpy_topk(probes[0], gal, bits, k) == single[0]


def test_empty_inputs():
    gal = np.zeros((0, 1), np.uint32)
    assert _hamming.topk(gal, np.zeros(1, np.uint32), 3) == []
    assert _hamming.topk(np.ones((4, 1), np.uint32), np.zeros(1, np.uint32), 0) == []
    out = np.empty((0, 0), np.int64), np.empty((0, 0), np.int32)
    _hamming.topk_batch(gal, np.zeros((0, 1), np.uint32), *out)


def test_strided_probes_are_read_correctly():
    g = np.arange(16, dtype=np.uint64).reshape(8, 2)
    wide = np.arange(40, dtype=np.uint64).reshape(4, 10)
    probes = wide[:, 2:6:2]  # (4, 2), not contiguous
    got_i, got_d = np.empty((4, 2), np.int64), np.empty((4, 2), np.int32)
    _hamming.topk_batch(g, probes, got_i, got_d)
    for j, p in enumerate(probes):
        ref = [(i, d) for d, i in _reference(p, g, 2)]
        assert _hamming.topk(g, p, 2) == ref == list(zip(got_i[j], got_d[j], strict=True))


def _out(b, k):
    return np.empty((b, k), np.int64), np.empty((b, k), np.int32)


G32 = np.arange(10, dtype=np.uint32).reshape(10, 1)
P32 = G32[:2]
READ_ONLY = np.zeros((2, 1), np.int32)
READ_ONLY.flags.writeable = False


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: _hamming.topk(G32[::2], G32[0], 1), ValueError, "codes must be a C-contiguous"),
        (lambda: _hamming.topk(G32.astype(np.int32), G32[0], 1), TypeError, "codes has format"),
        (lambda: _hamming.topk(G32.astype(np.float32), G32[0], 1), TypeError, "format"),
        (lambda: _hamming.topk([1, 2], G32[0], 1), TypeError, "bytes-like"),
        (lambda: _hamming.topk(G32, G32[0].astype(np.uint64), 1), TypeError, "8 bytes"),
        (lambda: _hamming.topk(G32, P32, 1), ValueError, "one probe"),
        (lambda: _hamming.topk(G32, G32[0], -1), ValueError, "k must be"),
        (lambda: _hamming.topk(G32.reshape(5, 2), G32[:2, 0], 1), ValueError, "one uint32 word"),
        (
            lambda: _hamming.topk(np.zeros((4, 3), np.uint64), np.zeros(3, np.uint64), 1),
            ValueError,
            "two uint64",
        ),
        (lambda: _hamming.topk(np.zeros((2, 2, 1), np.uint32), G32[0], 1), ValueError, "(n,)"),
        (
            lambda: _hamming.topk(np.zeros((4, 2), np.uint64), np.zeros(3, np.uint64), 1),
            ValueError,
            "multiple of 2",
        ),
        (lambda: _hamming.topk_batch(G32, P32, *_out(2, 11)), ValueError, "k <= n"),
        (lambda: _hamming.topk_batch(G32, P32, *_out(3, 1)), ValueError, "out_idx must be"),
        (
            lambda: _hamming.topk_batch(G32, P32, _out(2, 1)[0], np.empty((2, 1), np.int64)),
            ValueError,
            "k) int32",
        ),
        (
            lambda: _hamming.topk_batch(G32, P32, np.empty((2, 4), np.int64)[:, :1], _out(2, 1)[1]),
            ValueError,
            "out_idx must be a C-contiguous",
        ),
        (lambda: _hamming.topk_batch(G32, P32, _out(2, 1)[0], READ_ONLY), ValueError, "writable"),
        (lambda: _hamming.use("sse9"), ValueError, "not available"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_large_gallery_releases_the_gil_and_stays_exact():
    # 200k codes: the GIL-free path; two threads search at once and both must be exact
    rng = np.random.default_rng(5)
    gal, pool = _gallery(rng, 200_000, 32)
    probes = np.concatenate([pool, _codes(rng, 5, 32)])
    dist = np.stack([codes.hamming(p, gal) for p in probes])
    order = np.lexsort((np.broadcast_to(np.arange(len(gal)), dist.shape), dist), axis=1)[:, :5]
    ref_d = np.take_along_axis(dist, order, axis=1)
    results = {}

    def work(name):
        out_i, out_d = _out(len(probes), 5)
        _hamming.topk_batch(gal, probes, out_i, out_d)
        results[name] = out_i, out_d, [_hamming.topk(gal, p, 5) for p in probes]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out_i, out_d, single in results.values():
        assert (out_i == order).all() and (out_d == ref_d).all()
        assert single == [
            list(zip(r.tolist(), d.tolist(), strict=True))
            for r, d in zip(order, ref_d, strict=True)
        ]


def test_gallery_falls_back_to_numpy_without_the_extension(monkeypatch):
    # as on a device installed without a C compiler: the import fails, numpy serves
    monkeypatch.setitem(sys.modules, "agent._hamming", None)
    monkeypatch.delattr(agent, "_hamming")
    spec = importlib.util.spec_from_file_location("gallery_without_c", gallery.__file__)
    fallback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fallback)
    assert (fallback.KERNEL, fallback._hamming) == ("numpy", None)
    assert fallback.INT_CROSSOVER == fallback.NUMPY_INT_CROSSOVER
    assert gallery.KERNEL == "c"
    rng = np.random.default_rng(2)
    gal, pool = _gallery(rng, 50, 64)
    g = fallback.PackedGallery(range(50), gal, 64)
    assert g.search(pool[0], 3) == [(i, d) for d, i in _reference(pool[0], gal, 3)]
