"""TFLite backend: ai-edge-litert (the default, see DESIGN §6), else tflite-runtime.

TFLite tensors carry their own scale and zero point, so an int8 model describes itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.base import Backend, TensorInfo
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec

PACKAGES = ("ai_edge_litert", "tflite_runtime")


def interpreter_class(package: str | None = None) -> Any:
    """The Interpreter of ``package``, or of the first of PACKAGES installed when None."""
    if package is not None and package not in PACKAGES:
        raise ValueError(f"unknown TFLite package {package!r}; use one of {PACKAGES}")
    for name in (package,) if package else PACKAGES:
        try:
            module = importlib.import_module(f"{name}.interpreter")
        except ImportError:
            continue
        return module.Interpreter
    wanted = package or " or ".join(PACKAGES)
    raise RuntimeError(
        f"no TFLite runtime found ({wanted} is not installed): pip install ai-edge-litert "
        "(or tflite-runtime where a wheel exists for this platform), or use runtime=onnxruntime"
    )


def _load(interpreter: Any, path: Path, threads: int) -> Any:
    """tflite-runtime's last wheels are built against numpy 1.x and fail inside their C
    extension under numpy 2 (which agent.codes needs); say so instead of a bare SystemError."""
    try:
        return interpreter(model_path=str(path), num_threads=threads)
    except (SystemError, ImportError) as e:
        raise RuntimeError(
            f"{interpreter.__module__} cannot load {path} with numpy {np.__version__}: its wheel "
            "was built for numpy 1.x. Install ai-edge-litert (pip install ai-edge-litert) and "
            "use runtime=ai_edge_litert, or runtime=onnxruntime"
        ) from e


class TfliteBackend(Backend):
    runtime = "tflite"

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 1,
        spec: PreprocessSpec = DEFAULT_SPEC,
        package: str | None = None,
    ) -> None:
        self.path = Path(model_path)
        self.interpreter = _load(interpreter_class(package), self.path, threads)
        self.interpreter.allocate_tensors()
        super().__init__(spec)

    def _describe(self) -> tuple[TensorInfo, TensorInfo]:
        def info(d: dict[str, Any]) -> TensorInfo:
            scale, zp = d["quantization"]
            return TensorInfo(
                d["name"],
                tuple(int(v) for v in d["shape"]),
                np.dtype(d["dtype"]),
                float(scale),
                int(zp),
            )

        self._in_index = self.interpreter.get_input_details()[0]["index"]
        self._out_index = self.interpreter.get_output_details()[0]["index"]
        return (
            info(self.interpreter.get_input_details()[0]),
            info(self.interpreter.get_output_details()[0]),
        )

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in_index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out_index).copy()

    def close(self) -> None:
        self.interpreter = None
