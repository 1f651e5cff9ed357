"""TFLite backend: ai-edge-litert (the default, see DESIGN §6), else tflite-runtime.

TFLite tensors carry their own scale and zero point, so an int8 model describes itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.base import Backend, TensorInfo
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec


def interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise RuntimeError(
                "no TFLite runtime found: pip install ai-edge-litert (or tflite-runtime where "
                "a wheel exists for this platform), or use runtime=onnxruntime"
            ) from e
    return Interpreter


class TfliteBackend(Backend):
    runtime = "tflite"

    def __init__(
        self, model_path: str | Path, threads: int = 1, spec: PreprocessSpec = DEFAULT_SPEC
    ) -> None:
        self.path = Path(model_path)
        self.interpreter = interpreter_class()(model_path=str(self.path), num_threads=threads)
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
