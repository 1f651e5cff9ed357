import logging
import shutil
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import codes, gallery
from agent.gallery import Gallery, PackedGallery
from agent.match import Decision, Matcher, Thresholds

from .conftest import use_kernel

KERNELS = [
    pytest.param(
        "c", marks=pytest.mark.skipif(gallery._hamming is None, reason="agent._hamming not built")
    ),
    "numpy",
]


def test_the_c_kernel_is_built_where_a_compiler_is():
    # the extension is optional, so a failed build would pass silently without this
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): the numpy fallback is what this install has")
    assert gallery.KERNEL == "c", "agent._hamming was not built: see `pip install -v -e .`"


def _codes(rng, n, bits):
    return codes.pack_bits(rng.random((n, bits)) > 0.5)


def _flip(code, bits, positions):
    v = codes.to_int(code)
    for p in positions:
        v ^= 1 << p
    return codes.from_int(v, bits)


def _naive_topk(probe, gal, k):
    p = codes.to_int(probe)
    d = [(p ^ codes.to_int(c)).bit_count() for c in gal]
    return sorted((d[i], i) for i in range(len(d)))[:k]


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from(codes.SUPPORTED_BITS),
    n=st.sampled_from([1, 3, 15, 40, 700, 2500]),
    k=st.sampled_from([1, 2, 5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_equals_naive_bit_count(kernel, bits, n, k, seed):
    rng = np.random.default_rng(seed)
    # few distinct codes, so ties are common and the tie rule (lower index) is exercised
    pool = _codes(rng, 6, bits)
    gal = np.concatenate([pool[rng.integers(0, 6, n // 2)], _codes(rng, n - n // 2, bits)])
    probes = np.concatenate([pool[:2], _codes(rng, 2, bits)])
    with pytest.MonkeyPatch.context() as mp:
        use_kernel(mp, kernel)
        g = PackedGallery([f"s{i}" for i in range(n)], gal, bits)
        bi, bd = g.search_batch(probes, k)
        found = [g.search(probe, k) for probe in probes]
    for j, probe in enumerate(probes):
        ref = _naive_topk(probe, gal, k)
        assert found[j] == [(i, d) for d, i in ref]
        assert bi[j].tolist() == [i for _, i in ref] and bd[j].tolist() == [d for d, _ in ref]
        assert g.distances(probe).tolist() == [
            (codes.to_int(probe) ^ codes.to_int(c)).bit_count() for c in gal
        ]


@pytest.mark.parametrize("kernel", KERNELS)
def test_chunked_paths_agree(kernel, monkeypatch):
    use_kernel(monkeypatch, kernel)
    # small chunks so one test walks the multi-chunk single and batch searches
    monkeypatch.setattr(gallery, "CHUNK", 64)
    monkeypatch.setattr(gallery, "BATCH_ELEMS", 256)
    monkeypatch.setattr(gallery, "KEY_SORT_MAX", 40)  # the short last chunk
    monkeypatch.setattr(gallery, "BATCH_BYTES_MIN", 40)  # batch chunks of 51, the last of 31
    monkeypatch.setattr(gallery, "BATCH_2D_MAX", 10**9)
    rng = np.random.default_rng(7)
    for bits in (16, 32, 128):
        gal = np.concatenate([_codes(rng, 500, bits)] * 2)  # duplicates across chunks
        probes = _codes(rng, 5, bits)
        g = PackedGallery([str(i) for i in range(len(gal))], gal, bits)
        bi, _ = g.search_batch(probes, 5)
        monkeypatch.setattr(gallery, "BATCH_2D_MAX", 0)  # and the probe-at-a-time batch path
        bi1, bd1 = g.search_batch(probes, 1)
        monkeypatch.setattr(gallery, "BATCH_2D_MAX", 10**9)
        for j, probe in enumerate(probes):
            for k in (1, 5):
                ref = _naive_topk(probe, gal, k)
                assert g.search(probe, k) == [(i, d) for d, i in ref]
            assert bi[j].tolist() == [i for _, i in _naive_topk(probe, gal, 5)]
            assert (bi1[j, 0], bd1[j, 0]) == _naive_topk(probe, gal, 1)[0][::-1]


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from(codes.SUPPORTED_BITS),
    n=st.integers(1, 400),
    k=st.sampled_from([1, 2, 5, 9]),
    flips=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_many_ties_at_the_kth_distance(kernel, bits, n, k, flips, seed):
    # codes at a handful of distances, so dozens tie at the k-th: every path must keep the
    # lower indices, across single-probe chunks and batch tiles (sizes chosen to split them)
    rng = np.random.default_rng(seed)
    base = _codes(rng, 1, bits)[0]
    gal = np.stack(
        [
            _flip(base, bits, rng.choice(bits, rng.integers(0, flips + 1), replace=False).tolist())
            for _ in range(n)
        ]
    )
    probes = np.stack([base, _flip(base, bits, [0]), _codes(rng, 1, bits)[0]])
    with pytest.MonkeyPatch.context() as mp:
        use_kernel(mp, kernel)
        mp.setattr(gallery, "CHUNK", 37)
        mp.setattr(gallery, "BATCH_ELEMS", 3 * 29)
        mp.setattr(gallery, "KEY_SORT_MAX", 20)
        mp.setattr(gallery, "BATCH_SMALL_MAX", 10)
        mp.setattr(gallery, "BATCH_BYTES_MIN", 20)  # batch chunks of 29 codes count bytes
        g = PackedGallery([str(i) for i in range(n)], gal, bits)
        bi, bd = g.search_batch(probes, k)
        for j, probe in enumerate(probes):
            ref = _naive_topk(probe, gal, k)
            assert g.search(probe, k) == [(i, d) for d, i in ref]
            assert bi[j].tolist() == [i for _, i in ref] and bd[j].tolist() == [d for d, _ in ref]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", codes.SUPPORTED_BITS)
def test_topk_paths_at_their_size_limits(kernel, bits, monkeypatch):
    # every top-k selection (Python ints, sorted keys, partitioned keys, argmins over words or
    # bytes, small and chunked batches) at and around its size limit, k above n, and batches of
    # changing size reusing the buffers
    use_kernel(monkeypatch, kernel)
    monkeypatch.setattr(gallery, "KEY_SORT_MAX", 6)
    monkeypatch.setattr(gallery, "KEY_SELECT_MAX", 20)
    monkeypatch.setattr(gallery, "BATCH_SMALL_MAX", 6)
    monkeypatch.setattr(gallery, "BATCH_BYTES_MIN", 11)
    monkeypatch.setattr(gallery, "BATCH_ELEMS", 4 * 21)
    rng = np.random.default_rng(bits)
    pool = _codes(rng, 3, bits)
    for n in (1, 5, 6, 7, 11, 12, 20, 21, 22, 43):
        gal = np.concatenate([pool[rng.integers(0, 3, n - n // 2)], _codes(rng, n // 2, bits)])
        g = PackedGallery([str(i) for i in range(n)], gal, bits)
        for b in (4, 1, 4, 3):
            probes = np.concatenate([pool, _codes(rng, 1, bits)])[:b]
            for k in (1, 2, 5, n, n + 3):
                bi, bd = g.search_batch(probes, k)
                assert bi.dtype == np.int64 and bd.dtype == np.int32
                for j, probe in enumerate(probes):
                    ref = [(i, d) for d, i in _naive_topk(probe, gal, k)]
                    assert g.search(probe, k) == ref, (n, b, k)
                    assert list(zip(bi[j].tolist(), bd[j].tolist(), strict=True)) == ref
    assert g.search(pool[0], 0) == []
    bi, bd = g.search_batch(pool[:0], 3)
    assert bi.shape == bd.shape == (0, 3)


BITS = 32


@pytest.fixture
def world():
    """Ten subjects with unrelated print and vein templates and identity centroids."""
    rng = np.random.default_rng(3)
    labels = [f"id{i}" for i in range(10)]
    prints, veins, cents = _codes(rng, 10, BITS), _codes(rng, 10, BITS), _codes(rng, 10, BITS)
    gal = Gallery(
        {"print": PackedGallery(labels, prints, BITS), "vein": PackedGallery(labels, veins, BITS)}
    )
    centroids = dict(zip(labels, cents, strict=True))
    return labels, prints, veins, centroids, gal


@pytest.mark.parametrize(
    "probe",
    [np.array([0, 0xFFFFFFFF], np.uint32), np.array([1 << 40], np.uint64),
     np.array([[0], [0]], np.uint32)],
)  # fmt: skip
def test_a_probe_that_is_not_a_code_of_the_gallery_is_refused_by_every_mode(world, probe):
    """Scored, its extra bits counted, by 1:1 and by the fused modes; refused only by a 1:N
    search of one modality."""
    _, _, veins, _, gal = world
    m = Matcher(gal, Thresholds.from_bits(BITS, 4))
    calls = [
        lambda: m.identify("print", probe_print=probe),
        lambda: m.verify("print", probe_print=probe, subject="id3"),
        lambda: m.identify("multi", probe_print=probe, probe_vein=veins[3]),
        lambda: m.verify("multi", probe_print=probe, probe_vein=veins[3], subject="id3"),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_single_modality_modes(world):
    _, prints, veins, _, gal = world
    m = Matcher(gal, Thresholds.from_bits(BITS, 4))
    probe = _flip(prints[3], BITS, [0, 9])
    d = m.identify("print", probe_print=probe, top_k=3)
    assert (d.accepted, d.subject, d.distances, d.reason) == (True, "id3", {"print": 2}, "match")
    assert d.score == pytest.approx(2 / BITS) and d.threshold == pytest.approx(4 / BITS)
    assert d.candidates[0].subject == "id3" and len(d.candidates) == 3
    assert m.verify("print", probe_print=probe, subject="id3").accepted
    other = m.verify("print", probe_print=probe, subject="id4")
    assert not other.accepted and other.subject is None and other.reason == "no_match"
    far = _flip(veins[5], BITS, range(5))
    assert not m.identify("vein", probe_vein=far).accepted
    assert m.identify("vein", probe_vein=_flip(veins[5], BITS, [1])).subject == "id5"
    assert m.verify("vein", probe_vein=veins[5], subject="nobody").reason == "not_enrolled"
    assert isinstance(d.to_dict()["candidates"][0]["distances"], dict)


def test_multi_mean_versus_both(world):
    _, prints, veins, _, gal = world
    p = _flip(prints[2], BITS, [1])  # 1 bit off
    v = _flip(veins[2], BITS, range(7))  # 7 bits off
    t = Thresholds.from_bits(BITS, 4)
    mean = Matcher(gal, t, fusion="mean").verify("multi", p, v, subject="id2")
    both = Matcher(gal, t, fusion="both").verify("multi", p, v, subject="id2")
    assert mean.distances == both.distances == {"print": 1, "vein": 7}
    assert mean.accepted and mean.score == pytest.approx(4 / BITS)
    assert not both.accepted and both.score == pytest.approx(7 / BITS)
    ident = Matcher(gal, t, fusion="mean").identify("multi", p, v, top_k=2)
    assert ident.subject == "id2" and ident.candidates[0].distances == {"print": 1, "vein": 7}
    with pytest.raises(ValueError, match="needs a vein probe"):
        Matcher(gal, t).identify("multi", probe_print=p)


def test_cross_mode_compares_against_the_other_modality(world):
    _, prints, veins, _, gal = world
    m = Matcher(gal, Thresholds.from_bits(BITS, 3))
    # a print probe close to subject 6's vein template (co-hashing makes them close)
    d = m.identify("cross", probe_print=_flip(veins[6], BITS, [4]))
    assert (d.subject, d.distances) == ("id6", {"print_vs_vein": 1})
    both = m.verify(
        "cross", _flip(veins[6], BITS, [4]), _flip(prints[6], BITS, [1, 2]), subject="id6"
    )
    assert both.accepted and both.distances == {"print_vs_vein": 1, "vein_vs_print": 2}
    # the print probe's own print template does not count in cross mode
    assert not m.verify("cross", probe_print=prints[6], subject="id6").accepted


def test_centroid_mode_uses_raw_centroids(world):
    _, _, _, centroids, gal = world
    m = Matcher(gal, Thresholds.from_bits(BITS, 3), centroids=centroids)
    d = m.identify("centroid", probe_vein=_flip(centroids["id8"], BITS, [0, 1]))
    assert (d.subject, d.distances) == ("id8", {"vein_vs_centroid": 2})
    assert not m.verify("centroid", probe_print=centroids["id8"], subject="id1").accepted
    with pytest.raises(ValueError, match="centroids"):
        Matcher(gal, Thresholds.from_bits(BITS, 3)).identify(
            "centroid", probe_print=centroids["id8"]
        )


class _Enrolling(Gallery):
    """A print gallery that grows between searches, as enrollments make it."""

    def __init__(self, labels: list[str], prints: np.ndarray) -> None:
        super().__init__({})
        self.labels, self.prints = labels, prints

    def enrolled(self, n: int) -> None:
        self._galleries = {"print": PackedGallery(self.labels[:n], self.prints[:n], BITS)}


def test_a_1_to_n_threshold_too_loose_for_the_gallery_is_logged_once_per_size(caplog):
    """docs/capacity.md: the daemon logs capacity_exceeded; 32-bit codes allow t <= 4 at
    N = 1,000 and t <= 2 at N = 10,000 for a 1% FPIR."""
    rng = np.random.default_rng(7)
    labels = [f"id{i}" for i in range(10000)]
    prints = _codes(rng, 10000, BITS)
    gal = _Enrolling(labels, prints)
    gal.enrolled(1000)

    def warned() -> list[str]:
        msgs = [r.getMessage() for r in caplog.records if "capacity_exceeded" in r.getMessage()]
        caplog.clear()
        return msgs

    with caplog.at_level(logging.WARNING, logger="agent.capacity"):
        m = Matcher(gal, Thresholds.from_bits(BITS, 4))
        m.identify("print", probe_print=prints[0])
        assert warned() == []
        gal.enrolled(10000)  # enrollments: the same threshold is now too loose
        for _ in range(3):
            assert m.identify("print", probe_print=prints[5]).subject == "id5"
        (msg,) = warned()  # once for this size, not once per search
        assert "gallery=10000 threshold=4 largest_safe=2" in msg
        m.verify("print", probe_print=prints[5], subject="id5")  # 1:1 has no gallery to fear
        assert warned() == []
        loose = Matcher(gal, Thresholds.from_bits(BITS, 5))
        gal.enrolled(1000)
        loose.identify("print", probe_print=prints[0])
        assert len(warned()) == 1


def test_empty_gallery_and_thresholds():
    m = Matcher(Gallery({}), Thresholds.from_bits(BITS, 4))
    d = m.identify("print", probe_print=codes.from_int(5, BITS))
    assert isinstance(d, Decision) and d.reason == "empty_gallery" and not d.accepted
    t = Thresholds.from_fmr(BITS, 1e-3)
    assert t.for_mode("print") == 6 and t.for_mode("multi") == 9.5
    assert Thresholds.from_fmr(BITS, 1e-3, fusion="both").for_mode("multi") == 10
    # a bundle table is keyed by the evaluation's modes; its multi row is a SUM of two distances
    table = {
        "print": {"0.001": 5, "0.0001": 3, "eer": 9},
        "vein": {"0.001": 7, "eer": 8},
        "multi": {"1e-3": 15, "eer": 16},
        "cross_p2v": {"0.001": 4},
        "cross_v2p": {"0.001": 6},
    }
    t = Thresholds.from_table(BITS, table, 1e-3)
    assert (t.for_mode("print"), t.for_mode("multi"), t.for_mode("vein")) == (5, 7.5, 7)
    assert t.for_mode("cross") == 4  # the stricter direction
    assert t.for_mode("centroid") == 6  # not in the table: closed form
    assert Thresholds.from_table(BITS, table, 1e-3, fusion="both").for_mode("multi") == 7
    assert (
        Thresholds.from_table(
            BITS,
            {
                **table,
                "cross_v2p": {"eer": 5},
                "cross_p2v": {"eer": 5},
                "centroid_print": {"eer": 4},
                "centroid_vein": {"eer": 4},
            },
            "eer",
        ).for_mode("multi")
        == 8
    )
    with pytest.raises(ValueError, match="no EER threshold"):
        Thresholds.from_table(BITS, table, "eer")
    with pytest.raises(ValueError, match="unknown modes"):
        Thresholds(BITS, {"palm": 3})
