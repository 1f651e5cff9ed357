"""Whether the wall clock is synchronised, for the decisions' timestamps.

A Raspberry Pi has no real-time clock: it boots on the time it last saved (fake-hwclock), an hour
old or older after a power cut, until NTP steps it. A door log that files a decision under that
time is wrong by the step; ``clock_synced`` in the decision tells a consumer when to file it by
its own receipt time instead. The kernel's NTP state is what ``timedatectl`` reports as "System
clock synchronized": systemd-timesyncd, chrony and ntpd all clear ``STA_UNSYNC`` once they have
set the clock, and the kernel answers ``TIME_ERROR`` while it is set.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex`` of adjtimex(2), as glibc declares it for ``adjtimex``."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def _adjtimex() -> Callable[[Any], int] | None:
    try:
        # the process's own symbols, libc's among them: find_library would run ldconfig
        return ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):  # not Linux/glibc: the state is unknown
        return None


_ADJTIMEX = _adjtimex()


def read() -> tuple[int, Timex] | None:
    """(clock state, the kernel's timex) by a read-only adjtimex call; None where unavailable."""
    if _ADJTIMEX is None:
        return None
    tx = Timex()  # modes 0: read, change nothing (no privilege needed)
    state = _ADJTIMEX(ctypes.byref(tx))
    return None if state < 0 else (state, tx)


def synced() -> bool | None:
    """True once NTP (or a real-time clock driver) has set the clock; None if unknown."""
    got = read()
    if got is None:
        return None
    state, tx = got
    return state != TIME_ERROR and not tx.status & STA_UNSYNC
