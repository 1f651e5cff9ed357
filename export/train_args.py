"""The training command's flags: the reference's main.py names, checked when they are parsed.

A value that cannot work (a batch of 0, an evaluation every 0 epochs, a backbone that does not
exist) is refused by argparse with the usage line, before the data set is read, rather than as
a traceback after it, or after the first epoch. Kept apart from export.train so that
``--help`` needs neither torch nor the data set code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.cli import parse_number
from agent.codes import SUPPORTED_BITS

DATASETS = ("casiam", "polyu", "tjppv", "iitd", "generic")
# export.backbones.BACKBONES, without importing torch for --help (a test keeps them equal)
MODELS = ("res18", "light", "tiny")

EPILOG = """\
where --ds finds its files under --data-root (I identity, S sample, 1-based):
  casiam   Casia_M/{casia_700,casia_460,casia_850}/III_SS.jpg
  polyu    MS_PolyU/{Red_ind,Green_ind,Blue_ind,NIR_ind}/IIII_SSSS.jpg
  tjppv    Tongji_jpg/IIII_SSSS.jpg + Palmvein_ROI_gray_128x128/session{1,2}/NNNNN.bmp
  iitd     IITD/IIII/*.bmp (print only)
  generic  print/<identity>/<n>.png [+ vein/<identity>/<n>.png]
No data set yet? `palm-export synth --layout casiam --out data/` writes a synthetic one.
The reference command:
  python main.py -b 256 --ds casiam --bits 32 --model res18 --comment caRes32 --epoch 4000
Details: docs/training.md."""


def _at_least(low: int):
    def parse(text: str) -> int:
        value = parse_number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _non_negative(text: str) -> float:
    value = parse_number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("-b", "--batch-size", type=_at_least(1), default=256, help="global batch size")
    p.add_argument("--ds", choices=DATASETS, default="casiam", help="data set layout (below)")
    p.add_argument("--bits", type=int, choices=SUPPORTED_BITS, default=32)
    p.add_argument("--model", choices=MODELS, default="res18", help="backbone")
    p.add_argument("--comment", default="", help="run name; the default --out is runs/COMMENT")
    p.add_argument(
        "--epoch",
        dest="epochs",
        type=_at_least(1),
        default=4000,
        help="epochs in all (a resumed run counts those already done)",
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("PALM_DATA", "./data"),
        help="folder holding the data set (default: $PALM_DATA or ./data)",
    )
    p.add_argument("--workers", type=_at_least(0), default=0, help="data loader processes")
    p.add_argument("--eval-every", type=_at_least(1), default=50, help="evaluate every N epochs")
    p.add_argument(
        "--resume", nargs="?", const="last", help="continue from CKPT (default: OUT/last.pt)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if any")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--optimizer", choices=("rmsprop", "adam", "sgd"), default="rmsprop")
    p.add_argument("--pretrained", metavar="FILE", help="backbone state dict (torchvision names)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/COMMENT)")
    p.add_argument("--quant-weight", type=float, default=0.1, help="λ of the quantization term")
    p.add_argument("--cross-weight", type=float, default=1e-4, help="weight of the cross term")
    p.add_argument("--margin", type=float, default=2.0, help="contrastive margin")
    p.add_argument("--bit-margin", type=float, default=1.0, help="|u| the bit-margin term asks")
    p.add_argument(
        "--bit-margin-weight", type=float, default=0.0, help="weight of the bit margin (off: 0)"
    )
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument(
        "--time-limit",
        type=_non_negative,
        metavar="MIN",
        help="stop after this many minutes, then evaluate",
    )
    p.add_argument(
        "--save-every",
        type=_non_negative,
        default=60.0,
        metavar="SECONDS",
        help="write last.pt at most this often (0: after every epoch); always after the last "
        "epoch and on Ctrl-C or SIGTERM",
    )
    p.add_argument(
        "--threads",
        type=_at_least(1),
        help="torch CPU threads (1 is fastest on a CPU shared with others)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="main.py", description="train PalmCohashNet")
    add_arguments(p)
    return p.parse_args(argv)


def out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return Path("runs") / (args.comment or f"{args.ds}_{args.model}{args.bits}")


def device_problem(device: str | None) -> str | None:
    """What is wrong with a --device torch cannot use here, or None: `--device cuda` on a
    machine without a CUDA GPU (or a CPU-only torch) failed in a traceback from torch, after
    the data set was read."""
    if device is None:
        return None
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        return f"--device {device}: not a torch device; use cpu, cuda or cuda:N"
    if kind == "cuda" and not torch.cuda.is_available():
        why = "none is visible" if torch.version.cuda else "this torch is built without CUDA"
        return f"--device {device}: no CUDA GPU ({why}); use --device cpu"
    if kind not in ("cpu", "cuda"):
        return f"--device {device}: use cpu, cuda or cuda:N"
    return None
