"""``palm-export synth``: write a synthetic palm set in one of the loaders' layouts."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from export.synth.layouts import LAYOUTS
    from export.synth.levels import LEVELS

    p = subparsers.add_parser(
        "synth",
        help="write synthetic paired palm print + vein ROIs in a data set layout",
        description="Synthetic hands: identical bytes for identical arguments.",
    )
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="generic")
    p.add_argument("--ids", type=int, default=100, help="number of identities (hands)")
    p.add_argument("--samples", type=int, default=10, help="captures per identity")
    p.add_argument("--level", choices=list(LEVELS), default="medium", help="difficulty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="root folder the loaders will read")
    p.add_argument(
        "--sheet", type=Path, help="instead of a set, write a contact sheet PNG of --level"
    )
    p.add_argument("--hands", action="store_true", help="also write full-hand frames and videos")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from export.synth.dataset import write_dataset

    if args.sheet is not None:
        from export.synth.sheet import write_contact_sheet

        print(write_contact_sheet(args.sheet, args.level, args.seed))
        return 0
    if args.out is None:
        raise SystemExit("synth: --out DIR is required (the folder the loaders will read)")
    if args.ids < 1 or args.samples < 1:
        raise SystemExit(
            f"synth: --ids and --samples must be >= 1 (got {args.ids}, {args.samples})"
        )

    def bar(it):
        return tqdm(it, total=args.ids, unit="id", desc=f"synth {args.layout}")

    try:
        root = write_dataset(
            args.layout, args.out, args.ids, args.samples, args.level, args.seed, args.workers, bar
        )
    except (ValueError, FileExistsError) as e:  # too many samples for tjppv; a real set there
        raise SystemExit(f"synth: {e}") from None
    print(root)
    if args.hands:
        from export.synth.hands import write_hand_frames

        frames = write_hand_frames(
            args.out / "hands",
            args.ids,
            args.samples,
            args.level,
            args.seed,
            args.workers,
            video=True,
        )
        logger.info("synth hands written frames=%d dir=%s", len(frames), args.out / "hands")
    return 0
