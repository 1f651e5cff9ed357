"""The one interface every inference runtime implements, and what they all share.

A runtime file only knows how to load a model, describe its input/output tensors and run one
batch. Everything that must be identical across runtimes (preprocessing, layout, quantisation,
bit reading) lives here, so onnxruntime and TFLite cannot drift apart on the same bundle.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent import codes
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec, checked, lookup, preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    """A model tensor as the runtime reports it; ``scale == 0`` means not quantised."""

    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantised(self) -> bool:
        return self.scale > 0 and np.issubdtype(self.dtype, np.integer)


def layout_of(info: TensorInfo, spec: PreprocessSpec) -> str:
    """NCHW or NHWC, read from where the channel count sits in the model's own input shape."""
    shape = info.shape
    if len(shape) != 4:
        raise ValueError(f"model input {info.name!r} has shape {shape}; expected 4 dimensions")
    c, s = spec.channels, spec.input_size
    if shape[1] == c and shape[2] in (s, None) and shape[3] in (s, None):
        return "NCHW"
    if shape[3] == c and shape[1] in (s, None) and shape[2] in (s, None):
        return "NHWC"
    raise ValueError(
        f"model input {info.name!r} has shape {shape}, which fits neither NCHW nor NHWC for "
        f"{c} channels of {s}x{s}; the bundle's preprocess spec and the model disagree"
    )


def quantise(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Float tensor -> the model's integer input, with the model's own scale and zero point."""
    lim = np.iinfo(info.dtype)
    q = np.round(x / info.scale) + info.zero_point
    return np.clip(q, lim.min, lim.max).astype(info.dtype)


def dequantise(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    if not info.quantised:
        return np.asarray(q, dtype=np.float32)
    return ((q.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)


class Backend(ABC):
    """A loaded model: ROIs in, real outputs or packed co-hash codes out."""

    runtime: str = ""

    def __init__(self, spec: PreprocessSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        self.input, self.output = self._describe()
        self.layout = layout_of(self.input, spec)
        self.bits = int(self.output.shape[-1] or 0)
        # per grey level and channel, the model's own input value: normalising, then quantising
        # for an int8 model, done once per level instead of once per pixel and frame
        table = lookup(spec)
        table = quantise(table, self.input) if self.input.quantised else table
        self._table = np.ascontiguousarray(table.astype(self.input.dtype))  # (C, 256)
        self._table_hwc = np.ascontiguousarray(self._table.T)  # (256, C)
        logger.info(
            "model loaded runtime=%s layout=%s input_dtype=%s output_dtype=%s bits=%d",
            self.runtime,
            self.layout,
            self.input.dtype,
            self.output.dtype,
            self.bits,
        )

    @abstractmethod
    def _describe(self) -> tuple[TensorInfo, TensorInfo]:
        """(input, output) tensor descriptions read from the model."""

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """One batch in the model's layout and dtype -> raw output in the model's dtype."""

    @abstractmethod
    def close(self) -> None:
        """Release the runtime's session/interpreter (model memory on a small device)."""

    def tensor(self, rois: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 ROIs -> float32 NCHW batch through the bundle's preprocessing."""
        if isinstance(rois, np.ndarray) and rois.ndim == 2:
            rois = [rois]
        return np.stack([preprocess(r, self.spec) for r in rois])

    def run(self, x_nchw: np.ndarray) -> np.ndarray:
        """Normalised float32 NCHW batch -> raw outputs (n, K) in the model's output dtype.

        Public so the exporter can feed the exact tensors it fed the training framework.
        """
        return self._batched(self._model_input(x_nchw))

    def feed(self, rois: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 ROIs -> the model's input batch, in its layout and dtype, by table lookup.

        Bit for bit what :meth:`run` makes of :meth:`tensor`'s output (the table holds the same
        arithmetic per grey level), at a fraction of the cost: normalising, transposing and
        quantising a float tensor per frame took more time than a light int8 model's inference.
        """
        if isinstance(rois, np.ndarray) and rois.ndim == 2:
            rois = [rois]
        imgs = [checked(r, self.spec) for r in rois]
        c, s = self.spec.channels, self.spec.input_size
        shape = (len(imgs), c, s, s) if self.layout == "NCHW" else (len(imgs), s, s, c)
        out = np.empty(shape, self._table.dtype)
        for i, img in enumerate(imgs):
            bands = 1 if img.ndim == 2 else img.shape[2]
            if bands == 1 and self.layout == "NHWC":
                np.take(self._table_hwc, img.reshape(s, s), axis=0, out=out[i])
            elif bands in (1, c):
                for k in range(c):
                    band = img.reshape(s, s) if bands == 1 else img[:, :, k]
                    if self.layout == "NCHW":
                        np.take(self._table[k], band, out=out[i, k])
                    else:
                        out[i, :, :, k] = np.take(self._table[k], band)
            else:  # a colour ROI for a one-channel model: averaged first, as tensor() does
                out[i] = self._model_input(preprocess(img, self.spec)[None])[0]
        return out

    def _model_input(self, x_nchw: np.ndarray) -> np.ndarray:
        x = np.asarray(x_nchw, dtype=np.float32)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return quantise(x, self.input) if self.input.quantised else x

    def _batched(self, x: np.ndarray) -> np.ndarray:
        """A batch in the model's layout and dtype -> raw outputs (n, K)."""
        batch = self.input.shape[0]
        if batch is None or batch == len(x):
            return self._run(x).reshape(len(x), -1)
        # fixed-batch model (TFLite exports are usually batch 1): run in chunks, pad the last
        out = []
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            out.append(self._run(chunk).reshape(batch, -1)[:n])
        return np.concatenate(out)

    def outputs(self, rois: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """ROIs -> float32 (n, K) network outputs, dequantised for int8 models."""
        return dequantise(self.run(self.tensor(rois)), self.output)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model alone: its input batch (from :meth:`feed`) -> raw outputs (n, K)."""
        return self._batched(x)

    def pack(self, raw: np.ndarray) -> np.ndarray:
        """Raw outputs -> packed codes (n, words); an int8 output's bit is ``q > zero_point``."""
        zp = self.output.zero_point if self.output.quantised else 0.0
        return codes.pack(raw, zero_point=zp)

    def hash(self, rois: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """ROIs -> packed codes (n, words)."""
        return self.pack(self.infer(self.feed(rois)))

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
