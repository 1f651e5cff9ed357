"""One modality's hashing net -> ONNX, fp32 and statically calibrated int8 (QDQ).

The graph takes a fixed 1 x C x S x S float32 NCHW tensor (the output of
``agent.preprocess.preprocess`` with a batch axis) and gives 1 x K float32 outputs, for both
precisions: onnxruntime's QDQ int8 keeps float input and output, so the device code is the same.
Activations are uint8 because onnxruntime on x86 is no faster than fp32 with int8 activations.

BatchNorm is folded into the preceding Conv by ``fold_batchnorm`` before export, so the fp32
file has no BatchNormalization node and each Conv carries its folded bias. The exporter shares
byte-identical initializers between convs through Identity nodes (a fresh net's folded biases
are all zero); the quantizer then sees a bias that is not an initializer, cannot fold
Conv + DequantizeLinear into QLinearConv, and onnxruntime runs the int8 model dequantized,
slower than fp32. ``export_fp32`` therefore gives every Conv its own weight and bias
initializers, and ``quantize_int8`` runs onnxruntime's pre-processing (shape inference and
basic graph optimisation) before calibrating, so every Conv becomes a QLinearConv.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def fold_batchnorm(net: Any) -> Any:
    """Eval-mode copy with every Conv+BatchNorm pair folded into one Conv.

    Both converters take the folded graph, so they quantize the same weights the device runs.
    A net torch.fx cannot trace is returned unfused (the ONNX exporter still folds in eval mode).
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(net).eval()
    try:
        return fuse(net)
    except Exception as exc:  # fx cannot trace every module; folding is an optimisation
        logger.warning("batchnorm_fold=skipped reason=%s", exc)
        return net


def export_fp32(net: Any, channels: int, size: int, path: Path) -> None:
    import torch

    sample = torch.zeros(1, channels, size, size)
    with torch.no_grad():
        torch.onnx.export(
            fold_batchnorm(net),
            (sample,),
            str(path),
            dynamo=False,  # the TorchScript exporter gives one stable static graph here
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
        )
    _inline_shared_initializers(path)
    logger.info("onnx=fp32 path=%s bytes=%d", path, path.stat().st_size)


def _inline_shared_initializers(path: Path) -> None:
    """Replace each Identity that forwards an initializer by a copy of that initializer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            keep.append(node)
    if len(keep) == len(graph.node):
        return
    logger.info("onnx=fp32 inlined_initializers=%d", len(graph.node) - len(keep))
    del graph.node[:]
    graph.node.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


WEIGHT_TYPES = ("uint8", "int8")


def quantize_int8(
    fp32_path: Path, int8_path: Path, calib: np.ndarray, weights: str = "uint8"
) -> dict[str, Any]:
    """Static per-channel 8-bit QDQ from ``calib`` (N, C, S, S float32, training split only).

    ``weights``: uint8 (the default) multiplies without saturating on every x86 CPU; int8 runs
    two to three times faster where the CPU has 8-bit dot products (x86 VNNI), but x86 CPUs
    with AVX2 only sum uint8 x int8 pairs into saturating 16-bit integers and lose bits.
    """
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"ONNX int8 weights must be one of {WEIGHT_TYPES}, got {weights!r}")
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """One calibration tensor per call, then None."""

        def __init__(self) -> None:
            self._it = iter(np.asarray(calib, dtype=np.float32))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x[None]}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # the graph is static, so plain ONNX shape inference is enough (no symbolic pass)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    logger.info(
        "onnx=int8 path=%s bytes=%d calib=%d", int8_path, int8_path.stat().st_size, len(calib)
    )
    return {
        "method": "onnxruntime quantize_static",
        "format": "QDQ",
        "activations": "uint8 per-tensor",
        "weights": f"{weights} per-channel",
        "calibration": "minmax",
        "preprocessing": "onnxruntime quant_pre_process",
        "calibration_images": len(calib),
        "io": "float32",
    }
