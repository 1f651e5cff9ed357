"""``python -m export.demo``: the main job end to end, on this machine, in one command.

Synthetic palms -> training the light network on the CPU -> evaluation -> an int8 bundle -> a
private mosquitto (amqtt where it is missing) -> ``palm-agent run`` on replayed full-hand frames
-> subjects enrolled through the MQTT ``enroll`` command -> decisions on the broker, checked
against who was really in front of the camera. Every step is the command a user would type
(``palm-export ...``, ``palm-agent run``), run as a child process, so the demo proves those
commands, not a shortcut.
A second run reuses the data set, the checkpoint and the bundle made with the same settings
(``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from export import outdir
from export.demo import report
from export.demo.amqtt_broker import amqtt_available
from export.demo.args import parse_args
from export.demo.broker import mosquitto_available

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def step(n: int, title: str) -> float:
    print(f"\n=== [{n}/7] {title} " + "=" * max(0, 60 - len(title)), flush=True)
    return time.monotonic()


def palm_export(*args: str, log: Path | None = None) -> str:
    """Run ``palm-export ARGS`` with its progress visible; returns its stdout (kept in ``log``)."""
    print("$ palm-export " + " ".join(args), flush=True)
    cmd = [sys.executable, "-m", "export.cli", *args]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if log is not None:
        log.write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"demo: palm-export {args[0]} failed with exit code {proc.returncode}")
    return proc.stdout


def stamp_ok(path: Path, want: dict[str, Any], fresh: bool) -> bool:
    """Is the artefact next to this stamp made with exactly these settings?"""
    if fresh or not path.exists():
        return False
    return json.loads(path.read_text()) == want


def forget(*paths: Path) -> None:
    """Remove a stamp (and the log it vouches for) before its artefact is rewritten.

    A run stopped half-way (Ctrl-C, a failed command) must not leave the old stamp behind: the
    next run would take the half-written data set or bundle for a finished one.
    """
    for path in paths:
        path.unlink(missing_ok=True)


def writable(out: Path) -> Path:
    """``out``, created and known to be writable: a folder left to root by a run with sudo, a
    read-only disk or a file in the way fails here with what to do, not minutes later with a
    traceback."""
    try:
        outdir.writable(out, "the artefacts")
    except outdir.OutputError as e:
        raise SystemExit(
            f"demo: cannot write the artefacts to {out} ({e.why}): give a folder you "
            f"can write with --out DIR, or make this one yours (after a run as root: "
            f'sudo chown -R "$USER" {out})'
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare(a: argparse.Namespace, out: Path, times: dict[str, float]) -> tuple[Path, Path, str]:
    """Steps 1-4: data set, checkpoint, evaluation, bundle; each reused when its stamp matches.

    Returns (evaluation folder, bundle folder, the export's parity table).
    """
    t = step(1, "synthetic data set")
    data = out / "data"
    want = {
        "layout": "generic",
        "ids": a.ids,
        "samples": a.samples,
        "level": a.level,
        "seed": a.seed,
    }
    if stamp_ok(out / "data.stamp.json", want, a.fresh):
        print(f"reusing {data} (same settings; --fresh to regenerate)")
    else:
        forget(out / "data.stamp.json")
        palm_export(
            "synth", "--layout", "generic", "--ids", str(a.ids), "--samples", str(a.samples),
            "--level", a.level, "--seed", str(a.seed), "--out", str(data), "--workers", "2",
        )  # fmt: skip
        (out / "data.stamp.json").write_text(json.dumps(want))
    times["synth_s"] = time.monotonic() - t

    t = step(2, f"training the {a.model} network on the CPU (up to {a.minutes:g} min)")
    train = out / "train"
    ckpt = train / "best.pt"
    want_train = {**want, "model": a.model, "minutes": a.minutes, "epochs": a.epochs}
    want_bundle = {**want_train, "precision": a.precision}
    if stamp_ok(out / "train.stamp.json", want_train, a.fresh) and ckpt.exists():
        print(f"reusing {ckpt} (same settings; --fresh to retrain)")
    else:
        forget(out / "train.stamp.json", out / "bundle.stamp.json")
        for old in ("best.pt", "last.pt", "metrics.jsonl"):
            (train / old).unlink(missing_ok=True)
        train.mkdir(parents=True, exist_ok=True)
        palm_export(
            "train", "--ds", "generic", "--data-root", str(data), "--model", a.model,
            "--bits", "32", "-b", "32", "--optimizer", "adam", "--lr", "1e-3",
            "--epoch", str(a.epochs), "--time-limit", str(a.minutes), "--eval-every",
            str(a.epochs), "--threads", "2", "--device", "cpu", "--seed", str(a.seed),
            "--out", str(train), log=train / "train.out",
        )  # fmt: skip
        (out / "train.stamp.json").write_text(json.dumps(want_train))
    times["train_s"] = time.monotonic() - t

    t = step(3, "evaluation on the held-out captures (four modes, DET curves)")
    eval_dir = out / "eval"
    palm_export("eval", str(ckpt), "--out", str(eval_dir))
    times["eval_s"] = time.monotonic() - t

    t = step(4, "export: int8 TFLite + ONNX bundle, parity through the device runtimes")
    bundle = out / "bundle"
    if (
        stamp_ok(out / "bundle.stamp.json", want_bundle, a.fresh)
        and (bundle / "manifest.json").exists()
    ):
        print(f"reusing {bundle} (exported from this checkpoint)")
        parity_text = (out / "export.out").read_text() if (out / "export.out").exists() else ""
    else:
        forget(out / "bundle.stamp.json", out / "export.out")
        parity_text = palm_export(
            "export", str(ckpt), "--formats", "tflite,onnx", "--precision", a.precision,
            "--calib", "100", "--out", str(bundle), "--allow-degraded", log=out / "export.out",
        )  # fmt: skip
        (out / "bundle.stamp.json").write_text(json.dumps(want_bundle))
    times["export_s"] = time.monotonic() - t
    return eval_dir, bundle, parity_text


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not mosquitto_available():  # before minutes of training, not after
        if not amqtt_available():
            raise SystemExit(
                "demo: neither mosquitto nor amqtt is installed: run `bash scripts/bootstrap.sh` "
                "or `sudo apt-get install mosquitto mosquitto-clients`"
            )
        print(
            "demo: mosquitto is not installed; the broker will be the pure-Python amqtt "
            "(MQTT 3.1.1 only, plain TCP on 127.0.0.1 with passwords; the device falls back "
            "from MQTT 5)",
            flush=True,
        )
    out = writable(a.out.resolve())
    t_start = time.monotonic()
    times: dict[str, float] = {}
    eval_dir, bundle, parity_text = prepare(a, out, times)

    t = step(5, "replayed camera: full-hand frames of enrolled subjects and impostors")
    from export.demo.frames import write_replay

    enrolled = list(range(a.enroll))
    impostors = list(range(a.ids - a.impostors, a.ids))
    shots = write_replay(out / "replay", enrolled, impostors, a.captures, a.probes, a.seed,
                         a.level, first_sample=a.samples)  # fmt: skip
    times["replay_s"] = time.monotonic() - t

    t = step(6, "private broker + palm-agent run; enroll over MQTT; decisions")
    from export.demo.live import run_live

    live = run_live(out, bundle, shots, a)
    times["live_s"] = time.monotonic() - t

    step(7, "summary")
    times["total_s"] = time.monotonic() - t_start
    summary = report.build(out, eval_dir, bundle, shots, live, times, parity_text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(report.render(summary))
    return 0 if summary["decisions"]["all_received"] else 1


if __name__ == "__main__":
    sys.exit(main())
