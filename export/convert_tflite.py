"""One modality's hashing net -> TFLite (LiteRT) with litert-torch, fp32 and PT2E static int8.

No TensorFlow and no network: litert-torch lowers the torch graph itself. The input stays NCHW
(1 x C x S x S) as in torch; only the int8 model changes the tensor types: it takes an int8
input and gives int8 outputs, so the device quantizes the normalised input with the model's
input scale and zero point and reads bit k as ``q_k > output zero point``. Those parameters are
read back from the written file and recorded in the manifest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from export.convert_onnx import fold_batchnorm

logger = logging.getLogger(__name__)


def _quiet() -> None:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")


def export_fp32(net: Any, channels: int, size: int, path: Path) -> dict[str, Any]:
    import litert_torch
    import torch

    _quiet()
    sample = torch.zeros(1, channels, size, size)
    litert_torch.convert(fold_batchnorm(net), (sample,)).export(str(path))
    logger.info("tflite=fp32 path=%s bytes=%d", path, path.stat().st_size)
    return io_quantization(path)


def export_int8(net: Any, calib: np.ndarray, path: Path) -> dict[str, Any]:
    """PT2E static int8 (symmetric per-channel weights), observers fed by ``calib``."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    _quiet()
    batch = torch.from_numpy(np.asarray(calib, dtype=np.float32))
    sample = batch[:1]
    quantizer = pq.PT2EQuantizer().set_global(
        pq.get_symmetric_quantization_config(is_per_channel=True)
    )
    graph = torch.export.export(fold_batchnorm(net), (sample,)).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(batch.shape[0]):
            graph(batch[i : i + 1])
    graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    config = QuantConfig(pt2e_quantizer=quantizer)
    edge = litert_torch.convert(graph, (sample,), quant_config=config)
    edge.export(str(path))
    logger.info("tflite=int8 path=%s bytes=%d calib=%d", path, path.stat().st_size, len(calib))
    info = io_quantization(path)
    info["quantization"] = {
        "method": "litert-torch PT2E static",
        "activations": "int8 per-tensor",
        "weights": "int8 symmetric per-channel",
        "calibration": "histogram",
        "calibration_images": len(calib),
        "io": "int8",
    }
    return info


def io_quantization(path: Path) -> dict[str, Any]:
    """Layout, dtypes and (for integer tensors) scale/zero point of the written model's I/O."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]

    def quant(d: dict) -> dict[str, Any] | None:
        scale, zero = d["quantization"]
        if np.dtype(d["dtype"]).kind == "f":
            return None
        return {"scale": float(scale), "zero_point": int(zero), "dtype": np.dtype(d["dtype"]).name}

    shape = [int(s) for s in inp["shape"]]
    return {
        "layout": "NCHW" if shape[1] < shape[-1] else "NHWC",
        "input_dtype": np.dtype(inp["dtype"]).name,
        "output_dtype": np.dtype(out["dtype"]).name,
        "input_quant": quant(inp),
        "output_quant": quant(out),
    }
