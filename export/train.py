"""Training: the reference recipe (RMSprop 1e-5, CSQ + cross-modal contrastive) as a command.

`python main.py -b 256 --ds casiam --bits 32 --model res18 --comment caRes32 --epoch 4000` and
`palm-export train` with the same flags run :func:`run`. Under ``torchrun`` each process trains on
its share of every batch (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) and rank 0
evaluates and writes. Everything random is seeded from --seed and the epoch number (shuffling,
augmentation per sample; the cross-modal shuffle from the step too), so a CPU run is reproducible,
and a resumed run continues exactly where the interrupted one stopped. An interrupt during an
epoch's steps is held until the step under way is done (:class:`export.interrupts.WholeSteps`);
last.pt then records how far into the epoch the run got, and the resumed run trains the rest of
that epoch's order: the same batches, none of them twice.

Writes to --out: last.pt (after an epoch once --save-every seconds have passed since the last
one, after the last epoch, and on Ctrl-C or SIGTERM), best.pt (lowest mean Hamming EER over the
modes), metrics.jsonl (one line per evaluation) and eval/ (report.json of the latest evaluation,
det_<mode>.png of the last one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from agent.preprocess import DEFAULT_SPEC
from export.outdir import writable
from export.train_args import DATASETS, add_arguments, device_problem, out_dir, parse_args

__all__ = ["DATASETS", "add_arguments", "fit", "main", "out_dir", "parse_args", "run"]

logger = logging.getLogger(__name__)


# the flags a resumed run must share with the run it continues, as (args key, flag)
RESUME_FLAGS = {
    "ds": "--ds",
    "model": "--model",
    "bits": "--bits",
    "seed": "--seed",
    "optimizer": "--optimizer",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
}


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) — torchrun sets WORLD_SIZE; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), world, device


def _optimizer(args, params):
    import torch

    kinds = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return kinds[args.optimizer](params, lr=args.lr, weight_decay=args.weight_decay)


def _jsonable(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def fit(args: argparse.Namespace, arrays, dataset: dict) -> dict:
    """Train on in-memory arrays (export.data.PalmArrays); returns the last evaluation report."""
    import cv2
    import torch
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler, RandomSampler
    from tqdm import tqdm

    from export.augment import AugmentConfig
    from export.centroids import make_centroids
    from export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from export.data import (
        EpochSampler,
        PalmDataset,
        images_digest,
        network_input,
        reference_split,
        split_record,
        step_seed,
    )
    from export.data.loader import ChunkedLoader
    from export.evaluate import evaluate_model
    from export.interrupts import WholeSteps
    from export.losses import LossConfig, cohash_loss
    from export.model import PalmCohashNet, load_pretrained

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, device = _distributed(device)
    # process-wide settings, put back when done so a caller (a test, a bench) keeps its own
    restore = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        cv2.getNumThreads(),  # the loader stops OpenCV's pool before its workers fork
    )
    if device == "cpu":
        torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = out_dir(args)
    spec = DEFAULT_SPEC
    train_rows, test_rows = reference_split(arrays, args.seed)
    centroids = make_centroids(len(arrays.identities), args.bits, args.seed)
    cent_t = torch.as_tensor(centroids, dtype=torch.float32, device=device)
    model = PalmCohashNet(args.model, args.bits)
    if args.pretrained:
        load_pretrained(model, args.pretrained)
    model.to(device)  # before the optimizer, so resumed optimizer state lands on the device
    optimizer = _optimizer(args, model.parameters())
    loss_cfg = LossConfig(
        args.quant_weight, args.cross_weight, args.margin, args.bit_margin, args.bit_margin_weight
    )
    meta = {
        "labels": list(arrays.identities),
        "preprocess": spec.to_dict(),
        "split": {
            "seed": args.seed,
            "method": "reference: per identity, a seeded ceil(n/2) of the samples train",
            "train": split_record(arrays, train_rows),
            "test": split_record(arrays, test_rows),
            "images_sha256": {
                part: images_digest(arrays.subset(np.sort(rows)))
                for part, rows in (("train", train_rows), ("test", test_rows))
            },
        },
        "dataset": dataset,
        "loss": dataclasses.asdict(loss_cfg),
        "eval": None,
        "best_mean_eer": None,
    }
    start = 0
    # how far into epoch `start` an interrupt came: global samples of the epoch's order trained
    # on, steps taken, and the sums of their loss terms (for the epoch's mean in metrics.jsonl)
    progress: dict = {"samples": 0, "steps": 0, "sums": {}}
    if args.resume:
        path = out / "last.pt" if args.resume == "last" else Path(args.resume)
        if args.resume == "last" and not path.is_file():
            raise CheckpointError(
                f"nothing to resume: {path} does not exist (is --out or --comment the "
                "interrupted run's?); leave out --resume to start a new run"
            )
        resumed, ckpt = load_checkpoint(path, device)
        # flags the run must keep: another --optimizer failed at the first step (its state has
        # other fields), another --lr or --weight-decay was silently replaced by the run's own
        # from the optimizer state; --bits, --model, --ds and --seed change the net or the split
        then = ckpt.get("train", {}).get("args", {})
        differ = [
            f"{flag} {then[key]} (this command: {getattr(args, key)})"
            for key, flag in RESUME_FLAGS.items()
            if key in then and then[key] != getattr(args, key)
        ]
        if differ:
            raise CheckpointError(
                f"{path} is a run with {', '.join(differ)}; not resuming: pass the run's own "
                "flags, or another --out to start a new run"
            )
        split = meta["split"]
        if "images_sha256" not in ckpt["split"]:  # a run started before images were recorded
            split = {k: v for k, v in split.items() if k != "images_sha256"}
        if ckpt["split"] != split or ckpt["arch"] != model.arch():
            raise CheckpointError(
                f"{path} was trained on another split or architecture (--ds, --data-root, "
                "--seed or --model differ); not resuming: pass the run's own flags, or another "
                "--out to start a new run"
            )
        model.load_state_dict(resumed.state_dict())
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["train"]["epoch"]
        progress = ckpt["train"].get("in_epoch", progress)
        if progress["steps"] and progress.get("world", world) != world:
            # the epoch's order was split among the processes: another count cannot tell which
            # samples the interrupted run trained on
            logger.warning(
                "resuming with %d training processes, the interrupted run had %d: epoch %d runs "
                "again from its start (its %d finished steps are already in the weights)",
                world, progress["world"], start + 1, progress["steps"],
            )  # fmt: skip
            progress = {"samples": 0, "steps": 0, "sums": {}}
        meta["eval"], meta["best_mean_eer"] = ckpt["eval"], ckpt["best_mean_eer"]
        logger.info("resumed checkpoint=%s epoch=%d step=%d", path, start, progress["steps"])
        if start >= args.epochs:
            logger.warning(
                "nothing to train: %s has %d epochs done and --epoch %d is the total; pass a "
                "larger --epoch to train on (its last evaluation follows)",
                path, start, args.epochs,
            )  # fmt: skip
    net = model
    if world > 1:
        unused = arrays.vein is None
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)
    aug = AugmentConfig() if args.augment else None
    # for a GPU, uint8 images from the workers, normalised there: a quarter of the bytes through
    # the loader (one H100, 12 workers: 2,430 -> 3,998 pairs/s); on a CPU the workers normalise,
    # in parallel, rather than the training process
    on_gpu = device.startswith("cuda")
    train_ds = PalmDataset(arrays, train_rows, spec, aug, args.seed, normalised=not on_gpu)
    inner = (
        DistributedSampler(train_ds, world, rank, seed=args.seed)
        if world > 1
        else RandomSampler(train_ds, generator=torch.Generator())
    )
    sampler = EpochSampler(inner, args.seed)
    per_rank = max(1, args.batch_size // world)
    # one loader for the whole run (its workers start once), each batch built by all workers
    loader = ChunkedLoader(
        train_ds, per_rank, sampler, args.workers, pin_memory=device.startswith("cuda")
    )
    logger.info(
        "train start rank=%d world=%d device=%s train=%d test=%d batch_per_rank=%d chunks=%d",
        rank,
        world,
        device,
        len(train_rows),
        len(test_rows),
        per_rank,
        loader.parts,
    )
    test_arrays = arrays.subset(test_rows)
    metrics_path = out / "metrics.jsonl"
    t0 = saved_at = time.monotonic()
    epoch = done = start  # done: epochs whose training steps are all applied

    def save(name: str, epoch_done: int, in_epoch: dict | None = None) -> None:
        train_meta = {"command": " ".join(sys.argv), "args": _jsonable(args), "epoch": epoch_done}
        if in_epoch and in_epoch["steps"]:
            train_meta["in_epoch"] = in_epoch
        full = {**meta, "train": train_meta, "optimizer": optimizer.state_dict()}
        save_checkpoint(out / name, net, centroids, full)

    def train_step(item: list, gen: torch.Generator) -> dict[str, float]:
        """One optimiser step on a batch; returns its loss terms."""
        item = [t.to(device, non_blocking=True) for t in item]
        px, vx, y = (item[0], item[1], item[2]) if len(item) == 3 else (item[0], None, item[1])
        if on_gpu:
            px = network_input(px, spec)
            vx = network_input(vx, spec) if vx is not None else None
        up, uv = net(px, vx)
        loss, parts = cohash_loss(up, uv, y, cent_t, loss_cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **parts}

    gen = torch.Generator()  # the cross-modal shuffle, seeded for each step
    guard = WholeSteps()
    try:
        guard.install()
        for epoch in range(start, args.epochs):
            model.train()
            sampler.set_epoch(epoch, skip=progress["samples"] // world)
            # counted by hand after each step: tqdm's own iteration counts a step when the next
            # batch is asked for, so the bar showed a step's loss beside the count before it
            with tqdm(
                total=progress["steps"] + len(loader),
                initial=progress["steps"],
                desc=f"epoch {epoch + 1}/{args.epochs}",
                disable=rank != 0,
                leave=False,
                file=sys.stderr,
            ) as bar:
                for item in loader:
                    with guard.step():
                        gen.manual_seed(step_seed(args.seed, epoch, progress["steps"]))
                        terms = train_step(item, gen)
                        sums = progress["sums"]
                        progress = {
                            "samples": progress["samples"] + len(item[-1]) * world,
                            "steps": progress["steps"] + 1,
                            "sums": {k: sums.get(k, 0.0) + v for k, v in terms.items()},
                            "world": world,
                        }
                        mean = progress["sums"]["loss"] / progress["steps"]
                        bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
                        bar.update()
                bar.refresh()  # the last step: update() skips one that comes soon after another
            done = epoch + 1
            stop = args.time_limit is not None and time.monotonic() - t0 > 60 * args.time_limit
            if world > 1:
                flag = torch.tensor([int(stop)])
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            last = stop or epoch + 1 == args.epochs
            if rank == 0 and ((epoch + 1) % args.eval_every == 0 or last):
                # the DET plots once, for the last evaluation: drawn every time they cost
                # more than the metrics (1.9 s against 0.2 s for a CASIA-M-sized test split)
                report = evaluate_model(
                    model, test_arrays, centroids, spec, out / "eval", device, plots=last
                )
                meta["eval"] = report
                row = {
                    "epoch": epoch + 1,
                    "time_s": round(time.monotonic() - t0, 1),
                    **{k: v / max(1, progress["steps"]) for k, v in progress["sums"].items()},
                    "mean_eer": report["mean_eer"],
                    "eer": {m: r["eer"] for m, r in report["hamming"].items()},
                }
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                logger.info("eval epoch=%d mean_eer=%.4f", epoch + 1, report["mean_eer"])
                best = meta["best_mean_eer"]
                if best is None or report["mean_eer"] < best:
                    meta["best_mean_eer"] = report["mean_eer"]
                    save("best.pt", epoch + 1)
            # a res18 checkpoint with its optimizer state is 180 MB: written after every
            # sub-second epoch, it took half of a GPU run (one H100: 0.9 -> 0.45 s per epoch)
            due = time.monotonic() - saved_at >= args.save_every
            if rank == 0 and (last or due):
                save("last.pt", epoch + 1)
                saved_at = time.monotonic()
            if world > 1:
                dist.barrier()
            progress = {"samples": 0, "steps": 0, "sums": {}}  # for the next epoch
            if stop:
                logger.info("time limit reached epoch=%d minutes=%.1f", epoch + 1, args.time_limit)
                break
    except KeyboardInterrupt:
        if rank == 0:
            within = done == epoch  # during the epoch's steps, not its evaluation or save
            save("last.pt", done, progress if within else None)
            logger.warning(
                "interrupted epoch=%d step=%d saved=%s; continue with --resume", epoch + 1,
                progress["steps"], out / "last.pt",
            )  # fmt: skip
        raise
    finally:
        guard.restore()
        torch.use_deterministic_algorithms(restore[0])
        torch.set_num_threads(restore[1])
        cv2.setNumThreads(restore[2])
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return meta["eval"]


def dataset_meta(args: argparse.Namespace, arrays) -> dict:
    counts = np.bincount(arrays.labels)
    root = str(Path(args.data_root).expanduser().resolve())
    return {
        "ds": args.ds,
        "root": root,
        "ids": len(arrays.identities),
        "samples": int(counts.max()),
    }


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's time limit, ``kill``, ``systemctl stop``): last.pt is saved
    as on Ctrl-C, since the last periodic save may be up to --save-every seconds old."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def run(args: argparse.Namespace) -> int:
    from export.data import load_dataset
    from export.evaluate import format_table

    problem = device_problem(args.device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    writable(out_dir(args), "checkpoints", hint=", or another --comment")
    arrays = load_dataset(args.ds, args.data_root, DEFAULT_SPEC, workers=max(args.workers, 4))
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        report = fit(args, arrays, dataset_meta(args, arrays))
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if report is not None:
        print(format_table(report))
        print(f"mean_eer={report['mean_eer']:.4f} out={out_dir(args)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The top-level main.py: the reference's command line, errors as one readable line."""
    from export.cli import run_command

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_command(run, parse_args(argv))


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train PalmCohashNet (the reference's main.py flags)")
    add_arguments(p)
    p.set_defaults(func=run)
