"""Parity gate: every exported file against the fp32 torch model, on the test split.

Codes of an exported file are computed THROUGH the device's own path (``agent.inference``:
the bundle's preprocessing, the model's quantisation, ``q > zero_point``), so the codes a
device computes from the bundle are the codes this report measured, by construction. The
report stores a digest of each file's codes so that ``verify`` and the tests can check that.

Each file is judged alone: its modality's codes come from the file, the other modality's from
torch, so any change in a mode's EER is that file's doing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.preprocess import PreprocessSpec, preprocess

logger = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_EER_INCREASE_PP = 0.5
GATE_FMR = "0.001"
# which modalities' codes each mode (as export/evaluate names them) reads
MODE_USES = {
    "print": ("print",),
    "vein": ("vein",),
    "multi": ("print", "vein"),
    "cross_p2v": ("print", "vein"),
    "cross_v2p": ("print", "vein"),
    "centroid_print": ("print",),
    "centroid_vein": ("vein",),
}

Evaluator = Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]


def torch_codes(
    net: Any, rois: Sequence[np.ndarray] | np.ndarray, spec: PreprocessSpec, batch: int = 64
) -> np.ndarray:
    """The reference: fp32 torch outputs on the same preprocessed tensors -> packed codes."""
    import torch

    net = net.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(rois), batch):
            x = np.stack([preprocess(r, spec) for r in rois[i : i + batch]])
            outs.append(net(torch.from_numpy(x)).numpy())
    return codes.pack(np.concatenate(outs), zero_point=0.0)


def device_codes(
    model_path: Path, rois: Sequence[np.ndarray] | np.ndarray, spec: PreprocessSpec
) -> np.ndarray:
    """What a device computes from this file: agent.inference, one thread, as deployed."""
    from agent.inference import open_backend

    with open_backend(model_path, threads=1, spec=spec) as backend:
        return backend.hash(rois)


def bit_agreement(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    return float(np.mean(codes.unpack(a, bits) == codes.unpack(b, bits)))


def codes_digest(packed: np.ndarray) -> str:
    """sha256 of packed codes as little-endian words: equal digests mean equal codes."""
    arr = np.ascontiguousarray(packed)
    return hashlib.sha256(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _summary(rates: Any) -> dict[str, float]:
    r = rates.to_dict() if hasattr(rates, "to_dict") else dict(rates)
    return {"eer": float(r["eer"]), f"fnmr@{GATE_FMR}": float(r["fnmr_at_fmr"][GATE_FMR])}


def parity_report(
    reference: Mapping[str, np.ndarray],
    files: Sequence[tuple[Mapping[str, Any], np.ndarray]],
    evaluate: Evaluator,
    bits: int,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_eer_increase_pp: float = DEFAULT_MAX_EER_INCREASE_PP,
) -> dict[str, Any]:
    """``reference``: modality -> torch codes; ``files``: (model entry dict, its codes)."""
    ref_modes = {m: _summary(r) for m, r in evaluate(reference).items()}
    rows, failures = [], []
    for entry, file_codes in files:
        modality = entry["modality"]
        mixed = dict(reference)
        mixed[modality] = file_codes
        modes = {}
        for mode, rates in evaluate(mixed).items():
            if modality not in MODE_USES.get(mode, ()):
                continue
            s = _summary(rates)
            s["eer_delta_pp"] = 100.0 * (s["eer"] - ref_modes[mode]["eer"])
            modes[mode] = s
        agreement = bit_agreement(file_codes, reference[modality], bits)
        reasons = []
        if agreement < min_agreement:
            reasons.append(f"bit agreement {100 * agreement:.2f}% < {100 * min_agreement:.2f}%")
        for mode, s in modes.items():
            if s["eer_delta_pp"] > max_eer_increase_pp:
                reasons.append(
                    f"{mode} EER {100 * s['eer']:.2f}% is {s['eer_delta_pp']:+.2f} pp vs torch "
                    f"(limit +{max_eer_increase_pp:.2f} pp)"
                )
        failures += [f"{entry['file']}: {r}" for r in reasons]
        rows.append(
            {
                "file": entry["file"],
                "modality": modality,
                "format": entry["format"],
                "precision": entry["precision"],
                "bit_agreement": agreement,
                "codes_sha256": codes_digest(file_codes),
                "modes": modes,
                "passed": not reasons,
            }
        )
        logger.info(
            "parity file=%s agreement=%.5f passed=%s", entry["file"], agreement, not reasons
        )
    return {
        "reference": "torch fp32",
        "split": "test",
        "n_samples": len(next(iter(reference.values()))),
        "reference_codes_sha256": {m: codes_digest(c) for m, c in reference.items()},
        "reference_modes": ref_modes,
        "gate": {
            "min_bit_agreement": min_agreement,
            "max_eer_increase_pp": max_eer_increase_pp,
            "passed": not failures,
            "failures": failures,
        },
        "files": rows,
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The parity table as printed after an export and by ``inspect``."""
    head = f"{'file':<22} {'bits agree':>10}  {'mode':<15}{'EER':>8}{'torch':>8}{'Δ pp':>7}"
    head += f"{'FNMR@0.1%':>11}{'torch':>8}  ok"
    lines = [head, "-" * len(head)]
    ref = report["reference_modes"]
    for row in report["files"]:
        first = True
        for mode, s in row["modes"].items():
            name = f"{row['file']:<22} {100 * row['bit_agreement']:>9.2f}%" if first else " " * 33
            lines.append(
                f"{name}  {mode:<15}{100 * s['eer']:>7.2f}%{100 * ref[mode]['eer']:>7.2f}%"
                f"{s['eer_delta_pp']:>+7.2f}{100 * s[f'fnmr@{GATE_FMR}']:>10.2f}%"
                f"{100 * ref[mode][f'fnmr@{GATE_FMR}']:>7.2f}%  "
                + (("yes" if row["passed"] else "NO") if first else "")
            )
            first = False
    gate = report["gate"]
    lines.append(
        f"gate: bit agreement >= {100 * gate['min_bit_agreement']:.2f}%, EER <= torch + "
        f"{gate['max_eer_increase_pp']:.2f} pp on {report['n_samples']} test samples: "
        + ("PASSED" if gate["passed"] else "FAILED")
    )
    lines += [f"  {f}" for f in gate["failures"]]
    return "\n".join(lines)


def mode_evaluator(labels: np.ndarray, centroids: np.ndarray, bits: int) -> Evaluator:
    """Error rates per deployment mode from packed codes, through ``export.evaluate``.

    The evaluator reads real outputs and packs them at 0; ±1 outputs from the codes give it
    exactly these codes, so the modes are computed as in training's own evaluation.
    """
    from export.evaluate import evaluate_outputs
    from export.metrics import error_rates

    def evaluate(c: Mapping[str, np.ndarray]) -> dict[str, Any]:
        u = {m: np.where(codes.unpack(v, bits), 1.0, -1.0).astype(np.float32) for m, v in c.items()}
        _, curves = evaluate_outputs(u, labels, centroids)
        return {mode: error_rates(*s["hamming"]) for mode, s in curves.items()}

    return evaluate
