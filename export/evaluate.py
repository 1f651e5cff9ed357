"""Four-mode evaluation of a PalmCohashNet: print, vein, multi (fusion), cross, and centroids.

Every mode is scored twice on the test split: on the binary codes with Hamming distance (what the
device does) and on the real outputs with cosine distance (how the paper reports fusion and cross
matching). All genuine and impostor pairs are used, from one distance matrix per mode:
- print / vein / multi: each test sample against every other of the same split (pairs above the
  diagonal; rank-1 leaves the probe itself out). multi adds the print and vein distances.
- cross_p2v / cross_v2p: print probes against vein gallery and the reverse (all pairs, a capture's
  own other modality counting as genuine).
- centroid_print / centroid_vein: each code against every identity centroid, the paper's
  centroid verification; rank-1 is nearest-centroid identification.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.codes import hamming_matrix, pack, pack_bits
from agent.preprocess import PreprocessSpec
from export.data import PalmArrays, PalmDataset
from export.metrics import det_curve, error_rates, pair_scores, rank1

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode(
    model: torch.nn.Module,
    arrays: PalmArrays,
    spec: PreprocessSpec,
    batch: int = 64,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Real outputs (N, K) per modality, without augmentation, in eval mode."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(PalmDataset(arrays, spec=spec), batch_size=batch)
    outs: dict[str, list[np.ndarray]] = {"print": [], "vein": []}
    # a full test split through res18 on a CPU is minutes: the bar says it is moving
    for item in tqdm(loader, "evaluating", unit="batch", leave=False, file=sys.stderr):
        px = item[0].to(device)
        vx = item[1].to(device) if len(item) == 3 else None
        up, uv = model(px, vx)
        outs["print"].append(up.float().cpu().numpy())
        if uv is not None:
            outs["vein"].append(uv.float().cpu().numpy())
    model.train(was_training)
    return {k: np.concatenate(v) for k, v in outs.items() if v}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - a.astype(np.float64) @ b.astype(np.float64).T


def _mode(d: np.ndarray, probe_ids, gallery_ids, symmetric: bool) -> tuple[dict, tuple]:
    genuine, impostor = pair_scores(d, probe_ids, gallery_ids, symmetric=symmetric)
    rates = error_rates(genuine, impostor)
    d_rank = d.astype(np.float64)
    if symmetric:
        np.fill_diagonal(d_rank, np.inf)
    row = {
        "eer": rates.eer,
        "fnmr_at_fmr": rates.fnmr_at_fmr,
        "rank1": rank1(d_rank, probe_ids, gallery_ids),
        "n_genuine": rates.n_genuine,
        "n_impostor": rates.n_impostor,
    }
    return row, (genuine, impostor)


def _distances(u: dict[str, np.ndarray], centroids: np.ndarray, binary: bool) -> dict:
    if binary:
        codes = {m: pack(v) for m, v in u.items()}
        cent = pack_bits(centroids > 0)

        def dist(a, b):
            return hamming_matrix(a, b)
    else:
        codes = dict(u)
        cent = centroids.astype(np.float32)
        dist = _cosine
    out = {"print": (dist(codes["print"], codes["print"]), True)}
    out["centroid_print"] = (dist(codes["print"], cent), False)
    if "vein" in codes:
        out["vein"] = (dist(codes["vein"], codes["vein"]), True)
        out["multi"] = (out["print"][0] + out["vein"][0], True)
        out["cross_p2v"] = (dist(codes["print"], codes["vein"]), False)
        out["cross_v2p"] = (out["cross_p2v"][0].T, False)
        out["centroid_vein"] = (dist(codes["vein"], cent), False)
    return out


def output_margin(u: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """How far outputs sit from 0, the bit boundary: int8 export flips a bit only for |u| below
    half an output quantization step (max|u| / 254 with a symmetric scale)."""
    out = {}
    for m, v in u.items():
        a = np.abs(v)
        out[m] = {
            "p01_abs": float(np.percentile(a, 0.1)),
            "p1_abs": float(np.percentile(a, 1)),
            "median_abs": float(np.median(a)),
            "frac_within_int8_step": float(np.mean(a < a.max() / 254.0)),
        }
    return out


def evaluate_outputs(
    u: dict[str, np.ndarray], labels: np.ndarray, centroids: np.ndarray
) -> tuple[dict, dict]:
    """(report, curves): report[space][mode] with EER, FNMR@FMR, rank-1; curves for DET plots."""
    labels = np.asarray(labels)
    cent_ids = np.arange(len(centroids))
    report: dict = {"n_test": len(labels), "n_ids": len(np.unique(labels))}
    curves: dict = {}
    for space, binary in (("hamming", True), ("cosine", False)):
        report[space] = {}
        for mode, (d, sym) in _distances(u, centroids, binary).items():
            gallery = cent_ids if mode.startswith("centroid") else labels
            row, scores = _mode(d, labels, gallery, sym)
            report[space][mode] = row
            curves.setdefault(mode, {})[space] = scores
    report["mean_eer"] = float(np.mean([r["eer"] for r in report["hamming"].values()]))
    report["output_margin"] = output_margin(u)
    return report, curves


def write_det(curves: dict, out_dir: Path) -> list[Path]:
    """One DET PNG per mode (Hamming and cosine curves together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for mode, spaces in curves.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for space, (g, i) in spaces.items():
            _, fmr, fnmr = det_curve(g, i)
            keep = np.unique(np.linspace(0, len(fmr) - 1, min(len(fmr), 4000)).astype(int))
            ax.plot(np.maximum(fmr[keep], 1e-6), np.maximum(fnmr[keep], 1e-6), label=space)
        ax.set(xscale="log", yscale="log", xlabel="FMR", ylabel="FNMR", title=f"DET {mode}")
        ax.set(xlim=(1e-5, 1), ylim=(1e-4, 1))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out_dir / f"det_{mode}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def evaluate_model(
    model,
    arrays: PalmArrays,
    centroids: np.ndarray,
    spec: PreprocessSpec,
    out_dir: Path | None = None,
    device: str = "cpu",
    plots: bool = True,
) -> dict:
    """The report (and in ``out_dir`` report.json, and the DET plots unless ``plots`` is
    False: drawing them takes longer than the metrics, 1.9 against 0.2 s for 600 test pairs)."""
    u = encode(model, arrays, spec, device=device)
    report, curves = evaluate_outputs(u, arrays.labels, np.asarray(centroids))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if plots:
            write_det(curves, out_dir)
    return report


def format_table(report: dict) -> str:
    lines = [
        f"{'mode':<16}{'space':<9}{'EER':>8}{'FNMR@1%':>9}{'@0.1%':>8}{'@0.01%':>8}{'rank1':>8}"
    ]
    for space in ("hamming", "cosine"):
        for mode, r in report[space].items():
            f = r["fnmr_at_fmr"]
            lines.append(
                f"{mode:<16}{space:<9}{r['eer']:8.4f}{f['0.01']:9.4f}{f['0.001']:8.4f}"
                f"{f['0.0001']:8.4f}{r['rank1']:8.4f}"
            )
    return "\n".join(lines)


def run(args) -> int:
    from export.checkpoint import load_checkpoint
    from export.data import load_split
    from export.outdir import writable
    from export.train_args import device_problem

    problem = device_problem(args.device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.checkpoint).with_suffix("").as_posix() + f"_eval_{args.part}")
    writable(out, "the report")  # before minutes of evaluation, not after them
    model, ckpt = load_checkpoint(args.checkpoint, args.device)
    if args.ds and args.ds != ckpt["dataset"]["ds"]:
        ckpt = {**ckpt, "dataset": {**ckpt["dataset"], "ds": args.ds}}
    arrays = load_split(ckpt, args.part, root=args.data_root)
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    report = evaluate_model(model, arrays, ckpt["centroids"], spec, out, args.device)
    print(format_table(report))
    print(f"mean_eer={report['mean_eer']:.4f} report={out / 'report.json'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint in every mode (EER, DET, rank-1)")
    p.add_argument("checkpoint", help="a .pt file written by `palm-export train`")
    p.add_argument("--ds", help="data set name (default: the checkpoint's)")
    p.add_argument("--data-root", help="data root (default: the checkpoint's)")
    p.add_argument("--part", choices=("test", "train"), default="test")
    p.add_argument("--out", help="folder for report.json and det_<mode>.png")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.set_defaults(func=run)
