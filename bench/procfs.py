"""A process's or a thread's CPU time as Linux reports it in /proc, for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` (all the process's threads) or a
    ``/proc/<pid>/task/<tid>/stat`` file (one thread).

    The fields are counted after the command name's closing parenthesis, since the name itself
    may hold spaces and parentheses.
    """
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
