"""Frames -> one decision document: ROI, quality gate, co-hash, match, k-of-n agreement.

The document is what leaves the device (schema below); it carries distances and the model hash so
that a decision can be audited, and never an image or a code.

Outcomes: ``granted`` (a match), ``denied`` (1:1 claim not met), ``unknown`` (1:N, nobody close
enough, or nobody enrolled), ``error`` (the pipeline could not decide: a failed quality gate on an
explicit capture, a camera failure, an inference error).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import clock, quality, roi
from agent.config import Config
from agent.manifest import MODALITIES, BundleError
from agent.match import Decision, Matcher, Thresholds
from agent.quality import QualityThresholds
from agent.roi import RoiConfig

if TYPE_CHECKING:
    from agent.bundle import Bundle

logger = logging.getLogger(__name__)

SCHEMA = 1
# which probes each mode wants; cross and centroid use whichever modalities the camera gives
MODE_MODALITIES = {
    "print": ("print",),
    "vein": ("vein",),
    "multi": ("print", "vein"),
    "cross": ("print", "vein"),
    "centroid": ("print", "vein"),
}
# quality verdicts of a capture's first frame that mean nobody is in front of the reader: a
# lit hand on a dark background, without the hand, is an unlit or an empty scene
NOBODY = ("too_dark", "no_hand")
# the reason of a decision released when n frames passed without k of them granting one subject
NO_AGREEMENT = "no_agreement"


def manifest_hash(bundle_root: Path) -> str:
    """sha256 of manifest.json: names the exact models, preprocessing and thresholds in use."""
    return hashlib.sha256((Path(bundle_root) / "manifest.json").read_bytes()).hexdigest()


@dataclass
class Probe:
    """What the vision stages made of one capture: codes per modality, quality per modality."""

    codes: dict[str, np.ndarray] = field(default_factory=dict)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: str | None = None  # the first quality reason that stopped a modality
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms


# frame(s) -> Probe; the daemon builds it from agent.roi / agent.quality / agent.inference
Vision = Callable[[Mapping[str, np.ndarray]], Probe]


@dataclass
class Settings:
    mode: str
    identify: bool
    subject: str | None


class Decider:
    """Turns a :class:`Probe` into a decision document with a :class:`Matcher`."""

    def __init__(self, matcher: Matcher, device_id: str, model_hash: str) -> None:
        self.matcher = matcher
        self.device_id = device_id
        self.model_hash = model_hash

    def decide(self, probe: Probe, s: Settings, taken: float) -> dict[str, Any]:
        """``taken``: when the capture's first frame was taken (``time.monotonic()``)."""
        t0 = time.perf_counter()
        p, v = probe.codes.get("print"), probe.codes.get("vein")
        if s.identify:
            d = self.matcher.identify(s.mode, probe_print=p, probe_vein=v)
        else:
            d = self.matcher.verify(s.mode, probe_print=p, probe_vein=v, subject=s.subject or "")
        probe.timings["match"] = (time.perf_counter() - t0) * 1e3
        return self.document(s, probe, taken, decision=d)

    def document(
        self,
        s: Settings,
        probe: Probe,
        taken: float,
        decision: Decision | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        if decision is None:
            outcome, reason, subject, distances, threshold = "error", error, None, {}, None
        else:
            reason, subject = decision.reason, decision.subject
            distances, threshold = decision.distances, decision.threshold_bits
            outcome = "granted" if decision.accepted else "unknown" if s.identify else "denied"
        return {
            "schema": SCHEMA,
            "event_id": str(uuid.uuid4()),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "clock_synced": clock.synced(),
            "device": self.device_id,
            "mode": s.mode,
            "identify": s.identify,
            "claimed": None if s.identify else s.subject,
            "subject": subject,
            "decision": outcome,
            "reason": reason,
            "distances": {k: int(v) for k, v in distances.items()},
            "threshold": threshold,
            "quality": probe.quality,
            "model_hash": self.model_hash,
            "latency_ms": round((time.monotonic() - taken) * 1e3, 2),
        }


class Agreement:
    """k-of-n: hold frame decisions until k of the last n agree on one granted subject.

    With k = n = 1 every frame's decision passes straight through. Otherwise a ``granted`` is
    released as soon as k of the window grant the same subject, and a non-granted decision
    once n frames passed without agreement: the last one, or, when that one granted a subject
    fewer than k frames agreed on, ``unknown`` (1:N) or ``denied`` (1:1) with the reason
    ``no_agreement`` (a lone grant must not open the door k-of-n is there to keep shut). The
    window then starts afresh, as it does when the hand leaves (the daemon resets it), so that
    votes never span two presentations.
    """

    def __init__(self, k: int = 1, n: int = 1) -> None:
        self.k, self.n = k, n
        self._window: deque[dict[str, Any]] = deque(maxlen=n)

    def push(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        if doc["decision"] == "error":
            return doc  # errors are reported at once, they are not votes
        self._window.append(doc)
        granted = Counter(d["subject"] for d in self._window if d["decision"] == "granted")
        if granted:
            subject, votes = granted.most_common(1)[0]
            if votes >= self.k:
                out = self._last_for(subject)
                self._window.clear()
                out["agreement"] = {"k": self.k, "n": self.n, "votes": votes}
                return out
        if len(self._window) == self.n:
            self._window.clear()
            best = granted.most_common(1)[0][1] if granted else 0
            out = {**doc, "agreement": {"k": self.k, "n": self.n, "votes": best}}
            if doc["decision"] == "granted":
                out.update(
                    decision="unknown" if doc.get("identify", True) else "denied",
                    subject=None,
                    reason=NO_AGREEMENT,
                )
            return out
        return None

    def reset(self) -> None:
        self._window.clear()

    def _last_for(self, subject: str) -> dict[str, Any]:
        return dict(next(d for d in reversed(self._window) if d["subject"] == subject))


def load_configured_bundle(cfg: Config) -> Bundle:
    """The configured bundle, checked for the one form of the models the device runs."""
    from agent.bundle import load_bundle

    bc = cfg.bundle
    return load_bundle(bc.path, bc.public_key, only=(bc.runtime, bc.precision))


class BundleEngine:
    """The stages a bundle provides, loaded together so that a reload swaps them together.

    ``bundle``: one :func:`load_configured_bundle` already gave (the daemon's start reads it
    once, for the code length of the template store too); without it the bundle is loaded and
    checked here, as a reload does. ``per_capture``: the modalities a capture hashes (the mode's
    that the camera gives; None: all of the bundle's), which sets the threads of each model.
    """

    def __init__(
        self,
        cfg: Config,
        store: Any,
        bundle: Bundle | None = None,
        per_capture: tuple[str, ...] | None = None,
    ) -> None:
        from agent.gallery import StoreGallery
        from agent.inference import open_backend
        from agent.inference.concurrent import Runner

        bc = self._bundle_config = cfg.bundle
        b = bundle if bundle is not None else load_configured_bundle(cfg)
        if b.bits != store.bits:
            raise ValueError(
                f"bundle codes are {b.bits} bits, the template store holds {store.bits}"
            )
        self.modalities = tuple(m for m in MODALITIES if m in b.manifest.modalities)
        self.per_capture, self.threads = self._plan(per_capture)
        self.runner = Runner(concurrent=self.threads < bc.threads)
        self.backends = {
            m: open_backend(
                b.model_path(m, bc.runtime, bc.precision),
                bc.runtime,
                self.threads,
                b.preprocess(m),
                onnx_optimization=bc.onnx_optimization,
            )
            for m in self.modalities
        }
        wrong = {m: be.bits for m, be in self.backends.items() if be.bits != b.bits}
        if wrong:  # bits 16 and 32 both pack into one word: the centroids cannot tell them apart
            self.close()
            raise BundleError(
                f"{b.root}/manifest.json: bits is {b.bits}, but the {bc.runtime}/{bc.precision} "
                f"models give {wrong} outputs; the manifest was edited or belongs to other models "
                "(re-export the bundle)"
            )
        self.model_hash = manifest_hash(b.root)
        self.weights_sha256 = b.manifest.weights_sha256
        centroids = dict(zip(map(str, b.centroid_labels), b.centroid_codes, strict=True))
        self.matcher = Matcher(
            StoreGallery(store), _thresholds(cfg, b), centroids, fusion=cfg.match.fusion
        )
        self.decider = Decider(self.matcher, cfg.device.id, self.model_hash)
        self.limits = QualityThresholds.from_dict(cfg.quality.model_dump())
        r = cfg.roi
        self.roi_config = RoiConfig(
            already_roi=r.already_roi, mirror_left=r.mirror_left, min_hand_frac=r.min_hand_frac
        )
        self.shared_roi = r.shared if r.shared is not None else cfg.camera.layout == "switched"
        logger.info(
            "bundle loaded path=%s model_hash=%s modalities=%s threads_per_model=%d "
            "concurrent=%s",
            bc.path, self.model_hash, self.modalities, self.threads, self.runner.concurrent,
        )  # fmt: skip

    def _plan(self, per_capture: tuple[str, ...] | None) -> tuple[tuple[str, ...], int]:
        """(the modalities hashed per capture, each model's threads) for ``per_capture``."""
        from agent.inference.concurrent import threads_per_model

        bc = self._bundle_config
        used = tuple(m for m in self.modalities if per_capture is None or m in per_capture)
        return used, threads_per_model(bc.threads, len(used), bc.concurrent)

    def suits(self, per_capture: tuple[str, ...]) -> bool:
        """Whether its models already run on the threads that hashing ``per_capture`` per
        capture wants (print and vein alone want the same; one model and two do not)."""
        return self._plan(per_capture)[1] == self.threads

    def vision(self, frames: Mapping[str, np.ndarray]) -> Probe:
        """ROI, quality gate and code per modality, in the order ``frames`` iterates (the
        order they were taken); ``probe.timings`` gets each stage's ms summed over the
        modalities: ``roi``, ``quality``, ``convert`` (ROI -> the model's input, its output ->
        packed code), ``infer`` (the models: with concurrent models, the time this thread
        spends running its own and waiting for the other's) and ``capture`` (waiting for a
        frame still being taken while the first is processed: switched light).

        A capture whose first frame shows no hand, or nothing lit at all, ends there: nobody is
        in front of the reader, and the other frames are neither searched nor, under switched
        light, taken."""
        probe = Probe()
        clock = _StageClock(probe.timings)
        first: roi.RoiResult | None = None  # the capture's one search when the ROI is shared
        todo = [m for m in frames if m in self.backends]
        running: dict[str, Callable[[], np.ndarray]] = {}
        for m in todo:
            clock.start()
            frame = frames[m]
            clock.lap("capture")
            if first is None:
                found = roi.extract(frame, self.roi_config)
                # a failed search is not shared: the next frame gets its own try
                first = found if self.shared_roi and found.square is not None else None
            else:
                found = roi.recut(frame, first, self.roi_config)
            clock.lap("roi")
            verdict = quality.assess(frame, found, self.limits)
            probe.quality[m] = {
                "ok": verdict.ok,
                "reason": verdict.reason,
                "measures": {k: round(v, 3) for k, v in verdict.measures.items()},
            }
            clock.lap("quality")
            if not verdict.ok:
                probe.rejected = probe.rejected or verdict.reason
                if verdict.reason in NOBODY and m == todo[0]:
                    break
                continue
            x = self.backends[m].feed([found.roi])
            clock.lap("convert")
            running[m] = self.runner.start(self.backends[m], x, last=m == todo[-1])
            clock.lap("infer")
        for m, result in running.items():
            raw = result()
            clock.lap("infer")
            probe.codes[m] = self.backends[m].pack(raw)[0]
            clock.lap("convert")
        return probe

    def decide(self, probe: Probe, s: Settings, taken: float) -> dict[str, Any]:
        return self.decider.decide(probe, s, taken)

    def error(self, s: Settings, probe: Probe, taken: float, reason: str) -> dict[str, Any]:
        return self.decider.document(s, probe, taken, error=reason)

    def close(self) -> None:
        self.runner.close()
        for b in self.backends.values():
            b.close()


class _StageClock:
    """Adds the time since the last lap to a stage's total, in ms."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals
        self.t = time.perf_counter()

    def start(self) -> None:
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + (now - self.t) * 1e3
        self.t = now


def _thresholds(cfg: Config, b: Any) -> Thresholds:
    if cfg.match.threshold is not None:
        return Thresholds.from_bits(b.bits, cfg.match.threshold)
    target = cfg.match.fmr if cfg.match.fmr == "eer" else float(cfg.match.fmr)
    return Thresholds.from_table(b.bits, b.thresholds, target, cfg.match.fusion)
