"""Decisions in the five deployment modes: 1:1 verification and 1:N identification.

Every mode is a list of comparisons (a probe against the templates of one modality, or against
the bundle's identity centroids); a decision fuses their distances. Distances are normalised by
K before fusion so that a score means the same for any code length:

- ``print`` / ``vein``: one comparison against that modality's templates.
- ``multi``: print probe vs print templates and vein probe vs vein templates.
- ``cross``: print probe vs vein templates and/or vein probe vs print templates (co-hashing puts
  both modalities of one palm near the same code, so either can stand in for the other).
- ``centroid``: probe(s) vs the subject's identity centroid from the bundle (subjects the model was
  trained on); centroids are raw codes, so they are compared with the raw probe.

Fusion ``mean`` accepts when the mean normalised distance is <= t/K; ``both`` accepts only when
every comparison is <= t (the score is then the worst one). With one comparison they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agent import capacity, codes
from agent.gallery import Gallery, PackedGallery

logger = logging.getLogger(__name__)

MODES = ("print", "vein", "multi", "cross", "centroid")
FUSIONS = ("mean", "both")


@dataclass
class Candidate:
    subject: str
    score: float
    distances: dict[str, int]


@dataclass
class Decision:
    """One verification or identification outcome, as reported upstream (MQTT, logs)."""

    mode: str
    subject: str | None
    distances: dict[str, int]  # bits, per comparison (e.g. "print", "print_vs_vein")
    score: float  # fused normalised distance, 0 (identical) .. 1
    threshold: float  # normalised: accept when score <= threshold
    threshold_bits: float
    accepted: bool
    reason: str  # match | no_match | not_enrolled | empty_gallery
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Thresholds:
    """Acceptance thresholds per mode, in bits (a float for mean-fused modes)."""

    def __init__(self, bits: int, per_mode: Mapping[str, float]) -> None:
        codes.check_bits(bits)
        unknown = set(per_mode) - set(MODES)
        if unknown:
            raise ValueError(f"thresholds for unknown modes {sorted(unknown)}; modes are {MODES}")
        self.bits = bits
        self.per_mode = dict(per_mode)

    def for_mode(self, mode: str) -> float:
        if mode not in self.per_mode:
            raise ValueError(f"no threshold for mode {mode!r}; configure one (bits or a FMR)")
        return self.per_mode[mode]

    @classmethod
    def from_bits(cls, bits: int, threshold: float, **per_mode: float) -> Thresholds:
        """The same threshold for every mode, with optional per-mode overrides."""
        return cls(bits, {**dict.fromkeys(MODES, threshold), **per_mode})

    @classmethod
    def from_fmr(cls, bits: int, target_fmr: float, fusion: str = "mean") -> Thresholds:
        """Closed-form thresholds for random codes (see :mod:`agent.capacity`)."""
        return cls(bits, {m: _closed_form(bits, target_fmr, m, fusion) for m in MODES})

    @classmethod
    def from_table(
        cls,
        bits: int,
        table: Mapping[str, Mapping[str, float]],
        target: float | str,
        fusion: str = "mean",
    ) -> Thresholds:
        """Thresholds from a bundle table ``{eval_mode: {"0.001": bits, "eer": bits}}``.

        The table is keyed by the evaluation's modes (see ``BUNDLE_ROWS``), where ``multi`` is the
        SUM of the print and vein distances while the matcher fuses by mean, so it is halved here;
        under the ``both`` rule each distance must pass on its own, so the looser of the print and
        vein thresholds is used. Cross and centroid take the stricter of their two rows. Modes the
        table lacks fall back to the closed form for random codes (FMR targets only).
        """
        key = "eer" if target == "eer" else float(target)
        per_mode: dict[str, float] = {}
        for mode, rows in BUNDLE_ROWS.items():
            if mode == "multi" and fusion == "both":
                rows = ("print", "vein")
            found = [v for r in rows if (v := _lookup(table.get(r, {}), key)) is not None]
            if len(found) == len(rows):
                if mode == "multi":
                    per_mode[mode] = max(found) if fusion == "both" else found[0] / 2.0
                else:
                    per_mode[mode] = min(found)
            elif key == "eer":
                raise ValueError(
                    f"the bundle has no EER threshold for mode {mode}; set match.fmr to a number"
                )
            else:
                per_mode[mode] = _closed_form(bits, key, mode, fusion)
                logger.info(
                    "threshold_closed_form mode=%s fmr=%g bits=%s (not in bundle table)",
                    mode,
                    key,
                    per_mode[mode],
                )
        return cls(bits, per_mode)


# Rows of a bundle's threshold table (named by export/evaluate) behind each matcher mode.
BUNDLE_ROWS: dict[str, tuple[str, ...]] = {
    "print": ("print",),
    "vein": ("vein",),
    "multi": ("multi",),
    "cross": ("cross_p2v", "cross_v2p"),
    "centroid": ("centroid_print", "centroid_vein"),
}


def _lookup(row: Mapping[str, float], key: float | str) -> float | None:
    """The row's value at ``key`` ("eer" or a FMR, compared as numbers: "1e-3" == "0.001")."""
    for k, v in row.items():
        if key == "eer":
            if k == "eer":
                return float(v)
        elif _is_number(k) and abs(float(k) - key) <= 1e-9 * max(float(k), key):
            return float(v)
    return None


def _is_number(key: str) -> bool:
    try:
        float(key)
    except ValueError:
        return False
    return True


def _closed_form(bits: int, target_fmr: float, mode: str, fusion: str) -> float:
    comparisons = 2 if mode == "multi" else 1
    t = capacity.threshold_for_fmr(bits, target_fmr, comparisons, fusion)
    if t is None:
        raise ValueError(
            f"no threshold reaches FMR {target_fmr:g} with {bits}-bit codes in mode {mode}; "
            "use longer codes or a looser target"
        )
    return t


class Matcher:
    """Decisions against a gallery (and optionally the bundle's identity centroids)."""

    def __init__(
        self,
        gallery: Gallery,
        thresholds: Thresholds,
        centroids: Mapping[str, np.ndarray] | None = None,
        fusion: str = "mean",
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; use one of {FUSIONS}")
        self.gallery = gallery
        self.thresholds = thresholds
        self.fusion = fusion
        self.bits = thresholds.bits
        self.centroids = None
        self._capacity_checked: tuple[str, int] | None = None  # (mode, gallery size)
        if centroids:
            labels = list(centroids)
            packed = np.concatenate([np.asarray(centroids[k]).reshape(1, -1) for k in labels])
            self.centroids = PackedGallery(labels, packed, self.bits)

    def verify(
        self,
        mode: str,
        probe_print: np.ndarray | None = None,
        probe_vein: np.ndarray | None = None,
        subject: str = "",
    ) -> Decision:
        """1:1: is this the claimed subject?"""
        comps = self._comparisons(mode, probe_print, probe_vein)
        t = self.thresholds.for_mode(mode)
        distances = {}
        for name, probe, gal in comps:
            d = gal.distance_to(subject, probe) if gal is not None else None
            if d is None:
                return self._decision(mode, None, {}, t, "not_enrolled")
            distances[name] = d
        score = self._fuse(list(distances.values()))
        accepted = score <= t / self.bits
        return self._decision(
            mode,
            subject if accepted else None,
            distances,
            t,
            "match" if accepted else "no_match",
            score,
        )

    def identify(
        self,
        mode: str,
        probe_print: np.ndarray | None = None,
        probe_vein: np.ndarray | None = None,
        top_k: int = 1,
    ) -> Decision:
        """1:N: who is this, if anyone? Candidates are the top_k by fused score."""
        comps = self._comparisons(mode, probe_print, probe_vein)
        t = self.thresholds.for_mode(mode)
        if any(gal is None or len(gal) == 0 for _, _, gal in comps):
            return self._decision(mode, None, {}, t, "empty_gallery")
        self._check_capacity(mode, t, max(len(gal) for _, _, gal in comps))
        if len(comps) == 1:
            name, probe, gal = comps[0]
            cands = [
                Candidate(gal.labels[i], d / self.bits, {name: d})
                for i, d in gal.search(probe, top_k)
            ]
        else:
            cands = self._identify_fused(comps, top_k)
        if not cands:
            return self._decision(mode, None, {}, t, "empty_gallery")
        best = cands[0]
        accepted = best.score <= t / self.bits
        return self._decision(
            mode,
            best.subject if accepted else None,
            best.distances,
            t,
            "match" if accepted else "no_match",
            best.score,
            cands,
        )

    def _check_capacity(self, mode: str, t: float, n: int) -> None:
        """Log ``capacity_exceeded`` (:func:`agent.capacity.check`) when ``t`` is too loose for
        a 1:N search of ``n`` templates: once per mode and gallery size, so a search costs one
        comparison of a pair. One comparison's bound, for fused modes too: co-hashing makes the
        print and vein distances of one stranger correlated (docs/capacity.md)."""
        if self._capacity_checked != (mode, n):
            self._capacity_checked = (mode, n)
            capacity.check(self.bits, n, t)

    def _identify_fused(self, comps: list, top_k: int) -> list[Candidate]:
        """Full distance vectors per comparison, aligned on the subjects present in all."""
        labels = comps[0][2].labels
        common = [x for x in labels if all(g.index_of(x) is not None for _, _, g in comps[1:])]
        cols = []
        for _, probe, gal in comps:
            d = gal.distances(probe)
            cols.append(d[[gal.index_of(x) for x in common]] if gal.labels != common else d)
        dist = np.stack(cols, axis=1)
        scores = dist.max(axis=1) if self.fusion == "both" else dist.mean(axis=1)
        order = np.argsort(scores, kind="stable")[:top_k]
        names = [name for name, _, _ in comps]
        return [
            Candidate(
                common[i],
                float(scores[i]) / self.bits,
                dict(zip(names, dist[i].tolist(), strict=True)),
            )
            for i in order
        ]

    def _comparisons(self, mode: str, probe_print, probe_vein) -> list:
        """(name, probe in the gallery's representation, templates) for each comparison."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        given = {"print": probe_print, "vein": probe_vein}
        needed = {"print": ["print"], "vein": ["vein"], "multi": ["print", "vein"]}.get(mode)
        if needed is not None:
            missing = [m for m in needed if given[m] is None]
            if missing:
                raise ValueError(f"mode {mode} needs a {' and a '.join(missing)} probe")
            return [(m, self.gallery.prepare_probe(given[m]), self.gallery.get(m)) for m in needed]
        present = [m for m in ("print", "vein") if given[m] is not None]
        if not present:
            raise ValueError(f"mode {mode} needs a print or a vein probe (or both)")
        if mode == "centroid":
            if self.centroids is None:
                raise ValueError("mode centroid needs the bundle's identity centroids")
            return [(f"{m}_vs_centroid", given[m], self.centroids) for m in present]
        other = {"print": "vein", "vein": "print"}
        return [
            (f"{m}_vs_{other[m]}", self.gallery.prepare_probe(given[m]), self.gallery.get(other[m]))
            for m in present
        ]

    def _fuse(self, distances: list[int]) -> float:
        worst_or_mean = max(distances) if self.fusion == "both" else sum(distances) / len(distances)
        return worst_or_mean / self.bits

    def _decision(self, mode, subject, distances, t, reason, score=1.0, cands=None) -> Decision:
        return Decision(
            mode=mode,
            subject=subject,
            distances=distances,
            score=score,
            threshold=t / self.bits,
            threshold_bits=t,
            accepted=reason == "match",
            reason=reason,
            candidates=cands or [],
        )
