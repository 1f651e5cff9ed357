"""Inference: one :class:`Backend` per runtime, chosen by name from the bundle or config.

Runtimes import lazily, so a device with only one of them installed loads the other's file
never.
"""

from __future__ import annotations

from pathlib import Path

from agent.inference.base import Backend, TensorInfo
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec

RUNTIMES = {
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "tflite": "tflite",
    "litert": "tflite",
    "ai_edge_litert": "tflite",
    "tflite_runtime": "tflite",
}
_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}

__all__ = ["RUNTIMES", "Backend", "TensorInfo", "open_backend"]


def open_backend(
    model_path: str | Path,
    runtime: str | None = None,
    threads: int = 1,
    spec: PreprocessSpec = DEFAULT_SPEC,
    onnx_optimization: str = "all",
) -> Backend:
    """Load a model; ``runtime`` None picks by file suffix (.onnx / .tflite).

    ``onnx_optimization``: onnxruntime's graph optimisation level, ``all`` or ``extended``
    (see :class:`agent.config.BundleConfig`); LiteRT has no such choice.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; check the bundle path")
    if runtime is None:
        kind = _BY_SUFFIX.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"cannot tell the runtime of {path}; pass runtime= one of {RUNTIMES}")
    else:
        kind = RUNTIMES.get(runtime.lower())
        if kind is None:
            raise ValueError(f"unknown runtime {runtime!r}; use one of {sorted(RUNTIMES)}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if kind == "onnx":
        from agent.inference.onnx_backend import OnnxBackend

        return OnnxBackend(path, threads=threads, spec=spec, optimization=onnx_optimization)
    from agent.inference.tflite_backend import PACKAGES, TfliteBackend

    package = runtime.lower() if runtime and runtime.lower() in PACKAGES else None
    return TfliteBackend(path, threads=threads, spec=spec, package=package)
