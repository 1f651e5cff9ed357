"""The replayed camera of the demo: full-hand frames of enrolled subjects and of impostors.

Captures are rendered by :mod:`export.synth.hands` from identities of the training set, with
sample numbers the data set never used (new captures of known palms). The replay is a queue the
daemon consumes in order, so enrollment frames come first (``captures`` per subject, in the
order the enroll commands are sent), then the probes. A frame the device's ROI search or quality
gate would reject is skipped here, with the device's own code, so that enrollment takes exactly
the frames meant for each subject and every probe gives one decision.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from agent import quality, roi
from export.synth.hands import render_hand_frame

logger = logging.getLogger(__name__)

MODALITIES = ("print", "vein")


@dataclass(frozen=True)
class Shot:
    """One replayed capture (a print frame and a vein frame) and who it really shows."""

    identity: int  # 0-based synthetic identity
    label: str  # the data set's label of that identity (the subject name enrolled)
    sample: int  # capture number given to the renderer
    role: str  # enroll | genuine | impostor


def _usable(identity: int, sample: int, seed: int, level: str) -> dict | None:
    """Both modalities' frames if the device would accept them, else None."""
    frames = {}
    for m in MODALITIES:
        frame, _ = render_hand_frame(identity, sample, seed, level, modality=m)
        found = roi.extract(frame, roi.RoiConfig())
        if not quality.assess(frame, found, quality.QualityThresholds()).ok:
            return None
        frames[m] = frame
    return frames


def write_replay(
    out: Path,
    enrolled: list[int],
    impostors: list[int],
    captures: int,
    probes: int,
    seed: int,
    level: str,
    first_sample: int,
) -> list[Shot]:
    """Write ``out/{print,vein}/NNNNN.png`` and ``out/shots.json``; returns the shots in order."""
    for m in MODALITIES:
        (out / m).mkdir(parents=True, exist_ok=True)
        for old in (out / m).glob("*.png"):
            old.unlink()
    plan = [(i, "enroll", captures) for i in enrolled]
    plan += [(i, "genuine", probes) for i in enrolled]
    plan += [(i, "impostor", probes) for i in impostors]
    next_sample = {i: first_sample for i in enrolled + impostors}
    shots: list[Shot] = []
    skipped = 0
    bar = tqdm(total=sum(n for *_, n in plan), desc="render replay frames", unit="shot")
    for identity, role, n in plan:
        got = 0
        while got < n:
            sample = next_sample[identity]
            next_sample[identity] += 1
            if sample > first_sample + 40:
                raise RuntimeError(f"identity {identity}: too few frames pass the quality gate")
            frames = _usable(identity, sample, seed, level)
            if frames is None:
                skipped += 1
                continue
            k = len(shots)
            for m, frame in frames.items():
                cv2.imwrite(str(out / m / f"{k:05d}.png"), frame)
            shots.append(Shot(identity, f"{identity + 1:04d}", sample, role))
            got += 1
            bar.update()
    bar.close()
    (out / "shots.json").write_text(json.dumps([asdict(s) for s in shots], indent=1))
    logger.info("replay written dir=%s shots=%d skipped=%d", out, len(shots), skipped)
    return shots
