"""``palm-export export | verify | inspect | keygen``: checkpoint -> signed bundle, and back.

``export`` converts each modality's net to every requested format and precision, computes the
parity table through the device's own inference path, calibrates thresholds on the test split,
writes and signs the manifest, and re-opens the result with the device loader. Its last lines are
the parity table and the ``verify`` command to run on the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.bundle import load_bundle
from agent.manifest import FORMATS, PRECISIONS, BundleError
from export import bundle_writer, parity
from export.bundle_build import export_bundle, rois, tar_path
from export.convert_onnx import WEIGHT_TYPES as ONNX_WEIGHT_TYPES
from export.text import first_few

logger = logging.getLogger(__name__)

GATE_FAILED = 3


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} {bad or value!r}: choose from {allowed}")
    return items


def _count(text: str) -> int:
    """--calib: 0 failed in a traceback after the old bundle was cleared."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


_count.__name__ = "int"  # argparse names the type in its messages


def _load(args: argparse.Namespace) -> tuple[Any, dict, Any, Any]:
    from export.checkpoint import load_checkpoint
    from export.data.split import load_split

    model, ckpt = load_checkpoint(args.checkpoint)
    train = load_split(ckpt, "train", args.data_root)
    test = load_split(ckpt, "test", args.data_root)
    return model, ckpt, train, test


def cmd_export(args: argparse.Namespace) -> int:
    model, ckpt, train, test = _load(args)
    out = Path(args.out)
    report = export_bundle(
        model,
        ckpt,
        train,
        test,
        out,
        args.formats,
        args.precision,
        args.calib,
        args.sign_key,
        args.min_agreement,
        args.max_eer_increase,
        args.allow_degraded,
        args.onnx_weights,
    )
    print(parity.format_table(report))
    if not report["gate"]["passed"] and not args.allow_degraded:
        print(
            f"export FAILED the parity gate; {out} is marked degraded and a device refuses it. "
            "Train longer (or with a larger output margin), calibrate on more images, drop "
            "the failing precision, or pass --allow-degraded to ship it anyway.",
            file=sys.stderr,
        )
        return GATE_FAILED
    if args.tar:
        tar = bundle_writer.make_tar(out, tar_path(out))
        print(f"archive: {tar}")
    key = f" --public-key {Path(args.sign_key).with_suffix('.pub')}" if args.sign_key else ""
    print(f"verify with: palm-export verify {out}{key} --checkpoint {args.checkpoint}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Hashes and signature, then (with a checkpoint) the parity rerun on its test split."""
    bundle = load_bundle(args.bundle, public_key=args.public_key)
    print(
        f"{args.bundle}: {len(bundle.manifest.files())} files match their sha256 and size; "
        f"signature: {'verified' if bundle.signed else 'not checked'}"
    )
    if args.checkpoint is None:
        return 0
    from export.checkpoint import load_checkpoint
    from export.data.split import load_split

    model, ckpt = load_checkpoint(args.checkpoint)
    _exported_from(bundle, ckpt, args.checkpoint)
    test = load_split(ckpt, "test", args.data_root)
    recorded = {r["file"]: r for r in bundle.parity.get("files", [])}
    reference, files, mismatched = {}, [], []
    for m in bundle.manifest.modalities:
        spec = bundle.preprocess(m)
        reference[m] = parity.torch_codes(getattr(model, f"{m}_net"), rois(test, m), spec)
    for e in bundle.manifest.models:
        c = parity.device_codes(
            bundle.root / e.file, rois(test, e.modality), bundle.preprocess(e.modality)
        )
        files.append((vars(e), c))
        if recorded.get(e.file, {}).get("codes_sha256") != parity.codes_digest(c):
            mismatched.append(e.file)
    centroids = np.where(codes.unpack(bundle.centroid_codes, bundle.bits), 1, -1)
    evaluate = parity.mode_evaluator(test.labels, centroids, bundle.bits)
    gate = bundle.parity.get("gate", {})
    report = parity.parity_report(
        reference,
        files,
        evaluate,
        bundle.bits,
        gate.get("min_bit_agreement", parity.DEFAULT_MIN_AGREEMENT),
        gate.get("max_eer_increase_pp", parity.DEFAULT_MAX_EER_INCREASE_PP),
    )
    print(parity.format_table(report))
    if mismatched:
        print(
            f"codes differ from the export's parity report for: {first_few(mismatched)} "
            "(another runtime version or data set?)",
            file=sys.stderr,
        )
    return 0 if report["gate"]["passed"] and not mismatched else GATE_FAILED


def _exported_from(bundle: Any, ckpt: dict, path: str) -> None:
    """Refuse a checkpoint the bundle was not exported from: its test split has other
    identities, or no vein images, or its net another code length, and the parity rerun failed
    in a traceback (a TypeError on the missing vein images) or compared unrelated codes."""
    arch = bundle.manifest.training.get("arch")
    labels = [str(x) for x in bundle.centroid_labels]
    if (arch is None or arch == ckpt["arch"]) and labels == [str(x) for x in ckpt["labels"]]:
        return
    have = arch or {"bits": bundle.bits}
    raise BundleError(
        f"{path} is not the checkpoint {bundle.root} was exported from (the bundle: "
        f"{have.get('backbone', '?')} {have['bits']} bits, {len(labels)} identities; the "
        f"checkpoint: {ckpt['arch']['backbone']} {ckpt['arch']['bits']} bits, "
        f"{len(ckpt['labels'])} identities); pass that one, or verify without --checkpoint"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, public_key=args.public_key, allow_degraded=True)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m.to_dict(), indent=2, sort_keys=True))
        return 0
    print(
        f"bundle {bundle.root}  format v{m.format_version}  {m.bits} bits  "
        f"bit order {m.bit_order}  input {m.input_size}x{m.input_size}  created {m.created}  "
        f"signature {'verified' if bundle.signed else 'not checked'}"
    )
    for name, mod in m.modalities.items():
        p = mod.preprocess
        print(
            f"  {name}: channels {p['channels']} ({', '.join(mod.channel_order)}), "
            f"mean {p['mean']}, std {p['std']}"
        )
    print(f"{'file':<22}{'bytes':>10}  {'layout':<6} {'input':<8} sha256")
    for e in m.models:
        q = e.input_quant
        io = f"{e.input_dtype}" + (f" s={q.scale:.4g} zp={q.zero_point}" if q else "")
        print(f"{e.file:<22}{e.size:>10}  {e.layout:<6} {io:<8} {e.sha256[:16]}")
    print(f"centroids: {m.centroids.file}, {len(bundle.centroid_labels)} identities")
    targets = ("eer", "0.01", "0.001", "0.0001")
    width = max((len(mode) for mode in m.thresholds), default=4)
    print("thresholds in bits (accept when distance <= t), per mode and false-match rate:")
    print(f"  {'mode':<{width}}" + "".join(f"{k:>8}" for k in targets))
    for mode, row in m.thresholds.items():
        print(f"  {mode:<{width}}" + "".join(f"{row.get(k, float('nan')):>8.1f}" for k in targets))
    if m.parity.get("files"):
        print(parity.format_table(m.parity))
    print(f"training: {json.dumps(m.training.get('train', {}), sort_keys=True)[:300]}")
    # the network the device's enrolled templates must come from (the store refuses others)
    print(
        f"weights sha256: {m.weights_sha256 or 'not recorded (exported before manifests held it)'}"
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    prefix = Path(args.out)
    # PREFIX.pem, not with_suffix: the prefix site.2024 would have written site.pem
    private, public = (prefix.with_name(prefix.name + ext) for ext in (".pem", ".pub"))
    try:
        private.parent.mkdir(parents=True, exist_ok=True)  # `--out keys/bundle` on a fresh checkout
        bundle_writer.keygen(private, public)
    except OSError as exc:  # a key there already; a folder that is a file or not writable
        where = Path(str(exc.filename))
        what = "a file, not a folder" if where.is_file() else exc.strerror
        why = str(exc) if exc.filename is None else f"{where}: {what}"
        print(f"error: keygen --out {prefix}: {why}", file=sys.stderr)
        return 2
    print(
        f"private key {private} (keep it on the workstation), "
        f"public key {public} (copy it to devices)"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="checkpoint -> bundle (ONNX/TFLite, fp32/int8, parity)")
    p.add_argument("checkpoint")
    p.add_argument("--formats", type=lambda v: _csv(v, FORMATS, "format"), default=list(FORMATS))
    p.add_argument(
        "--precision", type=lambda v: _csv(v, PRECISIONS, "precision"), default=list(PRECISIONS)
    )
    p.add_argument("--calib", type=_count, default=200, help="training images for int8 ranges")
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--tar", action="store_true", help="also write OUT.tar")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key (palm-export keygen)")
    p.add_argument("--data-root", help="data set root, if not where the checkpoint says")
    p.add_argument("--min-agreement", type=float, default=parity.DEFAULT_MIN_AGREEMENT)
    p.add_argument(
        "--max-eer-increase",
        type=float,
        default=parity.DEFAULT_MAX_EER_INCREASE_PP,
        help="percentage points",
    )
    p.add_argument("--allow-degraded", action="store_true", help="ship even if the gate fails")
    p.add_argument(
        "--onnx-weights",
        choices=ONNX_WEIGHT_TYPES,
        default="uint8",
        help="ONNX int8 weight type: int8 runs 2-3x faster on CPUs with VNNI (docs/export.md), "
        "uint8 keeps every bit on x86 CPUs with AVX2 only",
    )
    p.set_defaults(func=cmd_export)
    v = sub.add_parser("verify", help="re-check a bundle's hashes/signature and rerun parity")
    v.add_argument("bundle")
    v.add_argument("--public-key", type=Path)
    v.add_argument("--checkpoint", help="rerun parity on this checkpoint's test split")
    v.add_argument("--data-root")
    v.set_defaults(func=cmd_verify)
    i = sub.add_parser("inspect", help="print a bundle's manifest readably")
    i.add_argument("bundle")
    i.add_argument("--public-key", type=Path)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)
    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    k.add_argument("--out", required=True, help="path prefix: PREFIX.pem and PREFIX.pub")
    k.set_defaults(func=cmd_keygen)
