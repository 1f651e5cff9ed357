"""Does an interrupted and resumed training run end where an uninterrupted one does?

On the CPU, training is deterministic and the tests require the resumed weights to equal an
uninterrupted run's bit for bit; the tests cannot run on a GPU, where training runs without
``torch.use_deterministic_algorithms`` and kernels may sum in a varying order. This bench trains
the same command three times through ``main.py`` — ``a`` and ``b`` uninterrupted, ``c`` stopped
by a real SIGINT at the given seconds and resumed with ``--resume`` each time — and reports how
far ``c`` ends from ``a`` beside how far ``b`` does: a resume that lost or repeated steps shows
as a gap beyond the run-to-run one. It also gives each run's seconds per epoch and the last
evaluation's Hamming EERs, and where in an epoch each interrupt landed (from the resume's log).

    python bench/train_resume.py --data-root data --ds casiam --model res18 --epoch 150 \\
        --interrupt-at 20 40 [--device cuda] [-- EXTRA TRAIN FLAGS]

One JSON line per run, then one for the comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESUMED = re.compile(r"resumed checkpoint=\S+ epoch=(\d+) step=(\d+)")


def _train(cmd: list[str], log: Path, interrupt_after: float | None) -> tuple[float, int]:
    """Runs the command; with ``interrupt_after``, sends SIGINT that many seconds in (or not
    at all if it ends first). Returns (seconds, exit code)."""
    t = time.monotonic()
    with log.open("a") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait()
    return time.monotonic() - t, proc.returncode


def _last_row(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _run(name: str, base: list[str], out: Path, interrupts: list[float]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    cmd = [*base, "--out", str(out)]
    wall = 0.0
    stops = []
    for i, at in enumerate([*interrupts, None]):
        seconds, code = _train([*cmd, *(["--resume"] if i else [])], log, at)
        wall += seconds
        if at is not None:
            stops.append({"after_s": at, "exit": code})
        elif code != 0:
            raise SystemExit(f"{name}: training exited with {code}; see {log}")
    resumed = [tuple(map(int, m)) for m in RESUMED.findall(log.read_text())]
    for stop, (epoch, step) in zip(stops, resumed, strict=False):
        stop.update(resumed_epochs_done=epoch, resumed_steps_into_epoch=step)
    row = _last_row(out)
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "epochs": row.get("epoch"),
        "s_per_epoch": round(wall / row["epoch"], 3) if row.get("epoch") else None,
        "train_s": row.get("time_s"),  # of the last run only: from its start to its last eval
        "interrupts": stops,
        "loss": row.get("loss"),
        "eer": row.get("eer"),
    }


def _distance(x: dict, y: dict) -> dict:
    """Largest absolute difference over all weights, and the norm of the difference over the
    norm of the weights (floating-point tensors only)."""
    keys = [k for k in x if x[k].is_floating_point()]
    diff = torch.cat([(x[k].double() - y[k].double()).flatten() for k in keys])
    norm = torch.cat([x[k].double().flatten() for k in keys]).norm()
    return {
        "max_abs": float(diff.abs().max()),
        "relative": float(diff.norm() / norm),
        "equal": all(torch.equal(x[k], y[k]) for k in x),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--ds", default="casiam")
    p.add_argument("--model", default="res18")
    p.add_argument("--epoch", type=int, default=150)
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--interrupt-at", type=float, nargs="+", default=[20.0, 40.0])
    p.add_argument("--out", default="runs/bench-train-resume")
    p.add_argument("extra", nargs="*", help="more training flags, after --")
    args = p.parse_args(argv)
    base = [
        sys.executable, "main.py", "-b", str(args.batch_size), "--ds", args.ds, "--data-root",
        args.data_root, "--bits", "32", "--model", args.model, "--epoch", str(args.epoch),
        "--workers", str(args.workers), *(["--device", args.device] if args.device else []),
        *args.extra,
    ]  # fmt: skip
    out = Path(args.out)
    runs = {}
    for name, interrupts in (("a", []), ("b", []), ("c", args.interrupt_at)):
        row = _run(name, base, out / name, interrupts)
        runs[name] = row
        print(json.dumps(row), flush=True)
    from export.checkpoint import load_checkpoint

    w = {n: load_checkpoint(out / n / "last.pt")[1]["state_dict"] for n in runs}
    print(
        json.dumps(
            {
                "uninterrupted_vs_uninterrupted": _distance(w["a"], w["b"]),
                "resumed_vs_uninterrupted": _distance(w["a"], w["c"]),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
