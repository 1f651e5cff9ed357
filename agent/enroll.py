"""Enrollment: N quality-gated captures per modality, a consistency check, a protected template.

The store computes the bitwise-majority template and protects every code before it is written;
this module decides whether the captures are good and consistent enough to enroll at all, and
says why not when they are not (a failure to enroll is an answer, not an exception trace).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent import codes
from agent.decide import Probe

logger = logging.getLogger(__name__)


class EnrollError(RuntimeError):
    """Enrollment did not happen; the message gives the reason a user can act on."""


def enroll(
    subject: str,
    modalities: Sequence[str],
    grab: Callable[[], Probe],
    store: Any,
    captures: int,
    max_spread: int,
    timeout: float,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Collect ``captures`` good codes per modality within ``timeout`` s and store them."""
    samples: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    rejected: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while any(len(v) < captures for v in samples.values()):
        if time.monotonic() > deadline:
            got = {m: len(v) for m, v in samples.items()}
            raise EnrollError(
                f"timeout after {timeout:g}s: good captures {got} of {captures}; "
                f"rejected {dict(rejected) or 'none'} (hold the palm flat and still, in view)"
            )
        tick()
        probe = grab()
        if probe.rejected:
            rejected[probe.rejected] += 1
        for m, code in probe.codes.items():
            if m in samples and len(samples[m]) < captures:
                samples[m].append(np.asarray(code).reshape(-1))
    spread = {}
    for m, rows in samples.items():
        arr = np.stack(rows)
        spread[m] = int(codes.hamming_matrix(arr, arr).max()) if len(arr) > 1 else 0
        if spread[m] > max_spread:
            raise EnrollError(
                f"inconsistent {m} captures: two of them differ by {spread[m]} bits "
                f"(limit {max_spread}); enroll again with the same hand, held the same way"
            )
    store.enroll(
        subject,
        print_codes=np.stack(samples["print"]) if "print" in samples else None,
        vein_codes=np.stack(samples["vein"]) if "vein" in samples else None,
    )
    logger.info(
        "enroll done subject=%s spread=%s rejected=%d", subject, spread, sum(rejected.values())
    )
    return {
        "subject": subject,
        "captures": {m: len(v) for m, v in samples.items()},
        "spread": spread,
        "rejected": dict(rejected),
    }
