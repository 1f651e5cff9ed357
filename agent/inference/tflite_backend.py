"""TFLite backend: ai-edge-litert (the default), else tflite-runtime.

tflite-runtime has no aarch64 wheel for Python 3.11 and later, and needs numpy < 2; it is used
where it is importable and LiteRT is not.

TFLite tensors carry their own scale and zero point, so an int8 model describes itself.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.base import Backend, TensorInfo
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec

logger = logging.getLogger(__name__)

PACKAGES = ("ai_edge_litert", "tflite_runtime")
MADV_DONTNEED = 4  # the same number on every Linux architecture


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
        "(or tflite-runtime where a wheel exists for this platform), or run the bundle's ONNX "
        "models (bundle.runtime: onnx in the device config)"
    )


def _load(interpreter: Any, path: Path, threads: int) -> Any:
    """tflite-runtime's last wheels are built against numpy 1.x and fail inside their C
    extension under numpy 2 (which agent.codes needs); say so instead of a bare SystemError."""
    try:
        return interpreter(model_path=str(path), num_threads=threads)
    except (SystemError, ImportError) as e:
        raise RuntimeError(
            f"{interpreter.__module__} cannot load {path} with numpy {np.__version__}: its wheel "
            "was built for numpy 1.x. Install ai-edge-litert (pip install ai-edge-litert; it is "
            "used first where both are installed), or run the bundle's ONNX models "
            "(bundle.runtime: onnx in the device config)"
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
        release_mapped(self.path)

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


def release_mapped(path: Path) -> int:
    """Drop this process's resident pages of a model file the interpreter has mapped.

    The interpreter maps the whole file, and XNNPACK packs the weights into its own memory when
    the model is loaded; the mapped copy is not read again, yet stays resident beside the packed
    one: 11 MB more per res18 int8 model. Dropping the pages only unmaps them from this process
    (the file and the page cache are untouched), so anything that still reads them faults them
    back in from the file. Returns the bytes released; 0 where /proc or madvise is missing.
    """
    target = str(path.resolve())
    try:
        with open("/proc/self/maps") as f:
            spans = [
                tuple(int(v, 16) for v in fields[0].split("-"))
                for fields in (line.split(maxsplit=5) for line in f)
                if len(fields) == 6 and fields[5].rstrip("\n") == target and "w" not in fields[1]
            ]
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    released = 0
    for start, end in spans:
        if madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
            released += end - start
        else:
            logger.debug("madvise failed path=%s errno=%d", target, ctypes.get_errno())
    logger.debug("model pages released path=%s bytes=%d", target, released)
    return released
