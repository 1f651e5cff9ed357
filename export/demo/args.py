"""The demo's options, with nothing but the standard library.

``scripts/demo.sh`` checks them (and answers ``--help``) with the system Python before the
environment step, which on a fresh clone creates ``.venv`` and installs every dependency: a
typo or a look at the options must not cost minutes of installation first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = (
    "The main job end to end on this machine: synthetic palms, training on the CPU, evaluation, "
    "an int8 bundle, a private broker, palm-agent run on replayed frames, enrollment and "
    "decisions over MQTT, and a summary. A second run reuses the data set, the checkpoint and "
    "the bundle made with the same settings."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--quick`` sets the small ones, so that one flag gives a run of a minute."""
    p = argparse.ArgumentParser(prog="scripts/demo.sh", description=DESCRIPTION)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="artefacts folder")
    p.add_argument("--ids", type=int, default=48, help="synthetic identities")
    p.add_argument("--samples", type=int, default=8, help="captures per identity")
    p.add_argument("--level", default="medium", choices=("easy", "medium", "hard"))
    p.add_argument("--model", default="light", help="backbone (light; tiny for a quick check)")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    p.add_argument("--epochs", type=int, default=300, help="upper bound on training epochs")
    p.add_argument("--enroll", type=int, default=6, help="subjects enrolled over MQTT")
    p.add_argument("--impostors", type=int, default=4, help="identities shown but not enrolled")
    p.add_argument("--probes", type=int, default=3, help="captures shown per person")
    p.add_argument("--captures", type=int, default=3, help="enrollment captures per modality")
    p.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"), help="on the device")
    p.add_argument("--mode", default="multi", choices=("print", "vein", "multi"))
    p.add_argument("--fmr", default="0.001", choices=("eer", "0.01", "0.001", "0.0001"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="regenerate, retrain and re-export")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a check that every step runs (tiny model, few ids, one minute): its model is "
        "barely trained, so its decisions are not a measure of anything",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.ids, a.samples, a.model, a.minutes, a.epochs = 12, 4, "tiny", 0.3, 3
        a.enroll, a.impostors, a.probes, a.captures = 2, 2, 2, 2
    if a.enroll + a.impostors > a.ids:
        p.error(f"--enroll + --impostors ({a.enroll + a.impostors}) exceeds --ids ({a.ids})")
    return a


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # exits 2 with the usage on a bad option, 0 after --help
