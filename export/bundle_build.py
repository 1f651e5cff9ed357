"""Checkpoint -> bundle folder: every model converted, checked for parity, calibrated, signed.

``export_bundle`` is what ``palm-export export`` runs and what a benchmark calls to build a
bundle in process. It writes into a staging folder and moves the result into place only when
the device loader has read it back, so the folder given always holds one whole bundle or none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.bundle import MANIFEST, SIGNATURE, load_bundle
from agent.manifest import (
    FORMAT_VERSION,
    FORMATS,
    MODALITIES,
    PRECISIONS,
    Manifest,
    Modality,
    ModelEntry,
)
from agent.preprocess import PreprocessSpec
from export import bundle_writer, calibrate, parity, weights
from export.outdir import writable

logger = logging.getLogger(__name__)

CHANNEL_ORDER = {"print": "bands as stacked by the data set", "vein": "grey repeated"}


def rois(arrays: Any, modality: str) -> np.ndarray:
    return arrays.print if modality == "print" else arrays.vein


def _convert(
    net: Any,
    modality: str,
    fmt: str,
    precision: str,
    spec: PreprocessSpec,
    calib: np.ndarray,
    out: Path,
    onnx_weights: str = "uint8",
) -> ModelEntry:
    from export import convert_onnx, convert_tflite

    name = _model_file(modality, precision, fmt)
    path = out / name
    c, s = spec.channels, spec.input_size
    info: dict[str, Any] = {"layout": "NCHW"}
    if fmt == "onnx":
        fp32 = out / _model_file(modality, "fp32", "onnx")
        if not fp32.exists():  # this export's own: ``out`` is its staging folder
            convert_onnx.export_fp32(net, c, s, fp32)
        if precision == "int8":
            info["quantization"] = convert_onnx.quantize_int8(fp32, path, calib, onnx_weights)
    elif precision == "fp32":
        info = convert_tflite.export_fp32(net, c, s, path)
    else:
        info = convert_tflite.export_int8(net, calib, path)
    e = bundle_writer.file_entry(out, name)
    return ModelEntry(modality, fmt, precision, e.file, e.sha256, e.size, **info)


def _model_file(modality: str, precision: str, fmt: str) -> str:
    """A model's file name in the bundle folder, e.g. ``print.int8.tflite``."""
    return f"{modality}.{precision}.{fmt}"


def tar_path(out: Path) -> Path:
    """``--tar``'s archive beside the bundle folder: run.1 -> run.1.tar."""
    return out.with_name(out.name + ".tar")


def _clear_bundle(out: Path) -> None:
    """Remove an earlier export's bundle from ``out`` once the new one is staged: models of a
    precision or format this export has not would otherwise be shipped in the tar; and its
    archive, which would otherwise sit beside the new folder holding the old bundle (an export
    without --tar, or one that fails the gate, writes none). The manifest goes first: a folder
    left without one is no bundle, where one naming removed files looked like a broken bundle."""
    names = [MANIFEST, SIGNATURE, bundle_writer.CENTROIDS] + [
        _model_file(m, p, f) for m in MODALITIES for p in PRECISIONS for f in FORMATS
    ]
    old = [out / n for n in names if (out / n).exists()]
    old += [tar_path(out)] if tar_path(out).is_file() else []
    for path in old:
        path.unlink()
    if old:
        logger.info("export replaces the bundle in %s (%d files)", out, len(old))


def export_bundle(
    model: Any,
    ckpt: dict[str, Any],
    train: Any,
    test: Any,
    out: Path,
    formats: list[str],
    precisions: list[str],
    calib_n: int,
    sign_key: Path | None = None,
    min_agreement: float = 0.99,
    max_eer_increase_pp: float = 0.5,
    allow_degraded: bool = False,
    onnx_weights: str = "uint8",
) -> dict:
    """Write the bundle into ``out``; returns the parity report (its gate decides the exit).

    Everything is written into a staging folder in ``out`` and moved into place at the end, the
    manifest last: an export stopped part way (Ctrl-C, a crash) leaves the old bundle whole, or
    no manifest, never a manifest naming files that are not there."""
    bits = int(ckpt["arch"]["bits"])
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    modalities = ["print"] + ([] if test.vein is None else ["vein"])
    # the key before any conversion: a wrong --sign-key found at the end left an unsigned
    # bundle in place of the old one, minutes later
    key = None if sign_key is None else bundle_writer.load_private_key(sign_key)
    writable(out, "the bundle")
    out.mkdir(parents=True, exist_ok=True)
    with bundle_writer.staging(out) as stage:
        models, calib_used = [], 0
        for m in modalities:
            net = getattr(model, f"{m}_net")
            calib = calibrate.calibration_tensors(rois(train, m), spec, calib_n)
            calib_used = len(calib)  # --calib beyond the training split takes all of it
            for fmt in formats:
                for precision in precisions:
                    models.append(
                        _convert(net, m, fmt, precision, spec, calib, stage, onnx_weights)
                    )
            if "onnx" in formats and "fp32" not in precisions:
                (stage / _model_file(m, "fp32", "onnx")).unlink()  # only the int8 quantizer's input
        centroid_entry = bundle_writer.write_centroids(stage, ckpt["centroids"], ckpt["labels"])
        evaluate = parity.mode_evaluator(test.labels, np.asarray(ckpt["centroids"]), bits)
        reference = {
            m: parity.torch_codes(getattr(model, f"{m}_net"), rois(test, m), spec)
            for m in modalities
        }
        files = [
            (vars(e), parity.device_codes(stage / e.file, rois(test, e.modality), spec))
            for e in models
        ]
        report = parity.parity_report(
            reference, files, evaluate, bits, min_agreement, max_eer_increase_pp
        )
        report["gate"]["allow_degraded"] = bool(allow_degraded)
        ref_rates = evaluate(reference)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            bits=bits,
            bit_order=codes.BIT_ORDER,
            input_size=spec.input_size,
            modalities={m: Modality(spec.to_dict(), [CHANNEL_ORDER[m]]) for m in modalities},
            models=models,
            centroids=centroid_entry,
            thresholds=calibrate.thresholds(ref_rates),
            parity=report,
            evaluation={
                "export_test_split": {k: v.to_dict() for k, v in ref_rates.items()},
                "checkpoint": ckpt.get("eval", {}),
            },
            training={
                "arch": ckpt["arch"],
                "dataset": ckpt.get("dataset", {}),
                "train": ckpt.get("train", {}),
                "split_sizes": {"train": len(train), "test": len(test)},
                "calibration_images": calib_used,
            },
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            weights_sha256=weights.weights_sha256(ckpt["state_dict"]),  # the templates' network
        )
        bundle_writer.write_manifest(stage, manifest)
        if key is not None:
            bundle_writer.sign(stage, key)
        load_bundle(stage, allow_degraded=True)  # what the device would refuse is never announced
        _clear_bundle(out)
        bundle_writer.publish(stage, out)
    return report
