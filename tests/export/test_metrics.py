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


def test_fnmr_at_an_unresolvable_fmr_on_cosine_distances():
    """Fewer impostor pairs than 1/FMR: the threshold sits just below the closest impostor.
    On real-valued distances one less than it rejected every genuine pair of a perfect split
    (FNMR 1.0 beside an EER of 0 in the cosine rows of a small test split)."""
    g, i = np.array([0.05, 0.1, 0.2]), np.array([0.5, 0.6, 0.9, 1.1])
    r = error_rates(g, i)
    assert r.eer == 0.0 and r.fnmr_at_fmr == {"0.01": 0.0, "0.001": 0.0, "0.0001": 0.0}
    assert 0.2 < r.threshold_at_fmr["0.01"] < 0.5
    assert error_rates(np.array([0.3, 0.7]), i).fnmr_at_fmr["0.01"] == 0.5
    # Hamming distances keep whole-number thresholds: one less than the closest impostor
    assert threshold_at_fmr(np.array([10, 11, 12]), 0.01) == 9.0
