"""The kernel's clock state, read through adjtimex(2) with ctypes."""

from __future__ import annotations

import os
import time

from agent import clock


def test_the_timex_read_back_holds_the_kernels_own_values():
    # a struct laid out wrongly reads neighbouring fields: tick and the time are two that can be
    # known independently (the clock tick in microseconds, and the wall clock)
    got = clock.read()
    assert got is not None
    state, tx = got
    assert 0 <= state <= clock.TIME_ERROR
    assert tx.tick == round(1e6 / os.sysconf("SC_CLK_TCK"))
    assert abs(tx.time.tv_sec - time.time()) < 2
    assert clock.synced() is (state != clock.TIME_ERROR and not tx.status & clock.STA_UNSYNC)
