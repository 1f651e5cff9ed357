import numpy as np
import pytest

from export.metrics import error_rates, pair_scores, rank1, threshold_at_fmr


def test_separable_scores_have_zero_eer():
    r = error_rates(np.array([0, 1, 2]), np.array([10, 11, 12, 13]))
    assert r.eer == 0.0
    assert r.fnmr_at_fmr["0.01"] == 0.0


def test_eer_against_brute_force():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 12, 400)
    i = rng.integers(6, 30, 4000)
    r = error_rates(g, i)
    best = min(
        (abs(np.mean(i <= t) - np.mean(g > t)), (np.mean(i <= t) + np.mean(g > t)) / 2)
        for t in range(-1, 31)
    )
    assert r.eer == pytest.approx(best[1])
    thr = threshold_at_fmr(i, 0.01)
    assert np.mean(i <= thr) <= 0.01 < np.mean(i <= thr + 1)


def test_rank1_and_pairs():
    d = np.array([[0, 5, 5], [5, 5, 0]])
    assert rank1(d, np.array([0, 2]), np.array([0, 1, 2])) == 1.0
    assert rank1(d, np.array([1, 2]), np.array([0, 1, 2])) == 0.5
    g, i = pair_scores(np.arange(9).reshape(3, 3), np.array([0, 0, 1]), np.array([0, 0, 1]), True)
    assert sorted(g.tolist()) == [1] and sorted(i.tolist()) == [2, 5]
