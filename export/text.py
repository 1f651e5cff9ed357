"""Words for messages: a long list of names cut to its first few."""

from __future__ import annotations

from collections.abc import Iterable


def first_few(names: Iterable[object], limit: int = 5) -> str:
    """``"a.png, b.png, c.png, d.png, e.png and 12 more"``: the first ``limit`` names, then how
    many were left out. A data set missing thousands of files named them all in one warning."""
    items = [str(n) for n in names]
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown
