"""Enrollment: N quality-gated captures per modality, a consistency check, a protected template.

The store computes the bitwise-majority template and protects every code before it is written;
this module decides whether the captures are good and consistent enough to enroll at all, and
says why not when they are not (a failure to enroll is an answer, not an exception trace).

Deduplication: before anything is written, each modality's new template (the majority the store
would keep) is searched in the enrolled gallery with the matcher the device decides with, at its
threshold for that modality. A match means the same palm under a second label, or a new palm the
device cannot tell apart from an enrolled one: either way the deployer should know now, not at
the door. The template rather than each capture: it is what the store keeps and the door compares
against, its flipped bits average out (one noisy capture of a stranger does not refuse them), the
distance reported is the one between the two stored templates whichever was enrolled first, and it
costs one search per modality.
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
from agent.match import Matcher
from agent.store import majority

logger = logging.getLogger(__name__)


class EnrollError(RuntimeError):
    """Enrollment did not happen; the message gives the reason a user can act on."""


class DuplicatePalm(EnrollError):
    """The new palm matches an enrolled subject; enrolling it anyway takes an explicit override."""

    def __init__(self, subject: str, matches: list[tuple[str, str, int, float]]) -> None:
        self.matches = matches  # (modality, enrolled subject, distance in bits, threshold)
        names = " and ".join(dict.fromkeys(repr(s) for _, s, _, _ in matches))
        detail = "; ".join(f"{m}: {d} bits from {s!r}, threshold {t:g}" for m, s, d, t in matches)
        super().__init__(
            f"{subject!r} matches enrolled {names} ({detail}): the same palm under a second "
            f"label, or one the device cannot tell apart from it; revoke {names} first, or, if "
            "they are different people, enroll anyway with allow_duplicate (the enroll command's "
            '"allow_duplicate": true, palm-agent enroll --allow-duplicate)'
        )


def enroll(
    subject: str,
    modalities: Sequence[str],
    grab: Callable[[], Probe],
    store: Any,
    captures: int,
    max_spread: int,
    timeout: float,
    tick: Callable[[], None] = lambda: None,
    *,
    matcher: Matcher,
    allow_duplicate: bool = False,
) -> dict[str, Any]:
    """Collect ``captures`` good codes per modality within ``timeout`` s and store them, unless
    the palm matches an enrolled subject under ``matcher`` (:class:`DuplicatePalm`; with
    ``allow_duplicate`` it is enrolled all the same, and a WARNING names both)."""
    samples: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    rejected: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while any(len(v) < captures for v in samples.values()):
        if time.monotonic() > deadline:
            got = {m: len(v) for m, v in samples.items()}
            if set(rejected) == {"no_frame"} and not any(got.values()):
                # no palm was ever seen: a camera that cannot be opened (not connected, another
                # process holding it, picamera2 missing) was told to hold the palm still
                hint = (
                    "no frame came from the camera: check it is connected and free, and the "
                    "camera section of the config; the log's capture warnings say why it failed"
                )
            else:
                hint = "hold the palm flat and still, in view"
            raise EnrollError(
                f"timeout after {timeout:g}s: good captures {got} of {captures}; "
                f"rejected {dict(rejected) or 'none'} ({hint})"
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
    duplicates = _deduplicate(subject, samples, matcher, allow_duplicate)
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
        # allowed matches: a UI or a log reader sees which enrolled subject it may be taken for
        "duplicates": [
            {"modality": m, "subject": other, "distance": dist, "threshold": t}
            for m, other, dist, t in duplicates
        ],
    }


def _deduplicate(
    subject: str, samples: dict[str, list[np.ndarray]], matcher: Matcher, allow: bool
) -> list[tuple[str, str, int, float]]:
    """Refuse (or, allowed, log and return) the matches of a palm whose template a 1:N search
    in its modality would take for an enrolled subject's: the matcher's own search and its
    threshold for that mode."""
    matches = []
    for m, rows in samples.items():
        template = majority(np.stack(rows), matcher.bits)
        d = matcher.identify(m, **{f"probe_{m}": template})
        if d.accepted:
            matches.append((m, d.subject, d.distances[m], d.threshold_bits))
    if matches and not allow:
        raise DuplicatePalm(subject, matches)
    for m, other, dist, t in matches:
        logger.warning(
            "enroll duplicate_allowed subject=%s matches=%s modality=%s distance=%d threshold=%g",
            subject, other, m, dist, t,
        )  # fmt: skip
    return matches
