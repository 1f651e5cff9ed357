import numpy as np
import pytest

from export.centroids import bch_codewords, distance_stats, hadamard, make_centroids


@pytest.mark.parametrize("k", [16, 32, 64, 128])
def test_hadamard_rows_are_orthogonal(k):
    h = hadamard(k).astype(np.int64)
    assert np.array_equal(h @ h.T, k * np.eye(k, dtype=np.int64))


def test_first_rows_are_hadamard_then_negated():
    c = make_centroids(50, 32, seed=3)
    h = hadamard(32)
    assert np.array_equal(c[:32], h) and np.array_equal(c[32:50], -h[:18])
    assert c.dtype == np.int8 and set(np.unique(c)) == {-1, 1}


def test_extended_bch_32_11_has_distance_12():
    words = bch_codewords(32, 11)
    assert words.shape == (2048, 32)
    weights = words.sum(axis=1)
    assert sorted(set(weights.tolist())) == [0, 12, 16, 20, 32]  # linear: min distance = 12


@pytest.mark.parametrize("n", [200, 500, 600])
def test_many_identities_stay_far_apart(n):
    c = make_centroids(n, 32, seed=0)
    assert c.shape == (n, 32)
    assert len({r.tobytes() for r in c}) == n
    assert np.all(c[64:].sum(axis=1) == 0)  # balanced beyond the Hadamard rows
    stats = distance_stats(c)
    assert stats["min"] >= 12 and stats["mean"] > 15.9
    # random balanced codes, as the reference draws them, come much closer
    rng = np.random.default_rng(0)
    rand = np.ones((n - 64, 32), dtype=np.int8)
    for row in rand:
        row[rng.permutation(32)[:16]] = -1
    assert distance_stats(np.concatenate([c[:64], rand]))["min"] < stats["min"]


def test_deterministic_and_seeded():
    a = make_centroids(300, 32, seed=1)
    assert np.array_equal(a, make_centroids(300, 32, seed=1))
    b = make_centroids(300, 32, seed=2)
    assert np.array_equal(a[:64], b[:64]) and not np.array_equal(a, b)


@pytest.mark.parametrize("bits,n", [(16, 100), (64, 300), (128, 300)])
def test_other_code_lengths(bits, n):
    c = make_centroids(n, bits)
    assert c.shape == (n, bits) and len({r.tobytes() for r in c}) == n
    assert distance_stats(c)["min"] >= bits // 4
