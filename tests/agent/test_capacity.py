import logging
import math
from decimal import Decimal, localcontext

import pytest

from agent import capacity


def _fpir_exact(p: float, n: int) -> float:
    with localcontext() as ctx:
        ctx.prec = 80
        return float(1 - (1 - Decimal(p)) ** n)


def _fmr_by_enumeration(bits: int, t: int) -> float:
    # independent reference: count codes within t of a fixed code by direct summation
    return sum(math.comb(bits, d) for d in range(t + 1)) / 2**bits


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_fmr_and_fpir_match_the_closed_form(bits):
    for t in range(bits // 2):
        p = _fmr_by_enumeration(bits, t)
        assert capacity.fmr(bits, t) == pytest.approx(p, rel=1e-12)
        for n in (1, 1000, 10**6):
            assert capacity.fpir(bits, t, n) == pytest.approx(_fpir_exact(p, n), rel=1e-9)


def test_fpir_keeps_precision_for_tiny_fmr():
    # 1 - (1 - p)^N computed naively rounds to 0 here; the result must be ~N*p
    p = capacity.fmr(128, 2)
    assert capacity.fpir(128, 2, 1000) == pytest.approx(1000 * p, rel=1e-6)


def test_documented_capacity_of_32_bit_codes():
    assert capacity.largest_threshold(32, 1000, 0.01) == 4
    assert capacity.largest_threshold(32, 10000, 0.01) == 2
    assert capacity.fpir(32, 4, 1000) <= 0.01 < capacity.fpir(32, 5, 1000)


def test_fused_rules():
    # mean of two comparisons: sum of two independent Binomial(32) is Binomial(64)
    assert capacity.fmr(32, 4.5, comparisons=2, rule="mean") == pytest.approx(
        _fmr_by_enumeration(64, 9)
    )
    assert capacity.fmr(32, 4, comparisons=2, rule="both") == pytest.approx(
        _fmr_by_enumeration(32, 4) ** 2
    )
    t = capacity.threshold_for_fmr(32, 1e-3)
    assert capacity.fmr(32, t) <= 1e-3 < capacity.fmr(32, t + 1)
    assert capacity.threshold_for_fmr(16, 1e-9) is None


def test_table_rows_and_check_warns(caplog):
    rows = capacity.table(32, 1000)
    assert [r["t"] for r in rows] == list(range(len(rows)))
    assert rows[-1]["fpir"] > 0.999 and rows[4]["fpir"] <= 0.01
    with caplog.at_level(logging.WARNING, logger="agent.capacity"):
        assert capacity.check(32, 1000, 4)
        assert not caplog.records
        assert not capacity.check(32, 1000, 6)
    assert "capacity_exceeded" in caplog.text and "largest_safe=4" in caplog.text
