"""The bundle's manifest: its schema, and the strict reading of a ``manifest.json``.

The schema lives on the device side, so that the exporter writes exactly what the device reads
(``export/bundle_writer`` and ``export/export_cli`` build their manifests from these classes).
Reading refuses a wrong type, an unknown modality, format or precision, an unknown format
version or bit order, each with the field at fault: a device that guessed at any of them would
make wrong decisions silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from agent import codes

FORMAT_VERSION = 1
MODALITIES = ("print", "vein")
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8")
# threshold keys besides "eer", as export/metrics writes the FMRs
FMR_KEYS = ("0.01", "0.001", "0.0001")


class BundleError(ValueError):
    """A bundle that must not be used; the message names the file or field at fault."""


@dataclass(frozen=True)
class FileEntry:
    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class TensorQuant:
    """Affine quantization of an int8 model's input or output: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"


@dataclass(frozen=True)
class ModelEntry:
    modality: str
    format: str
    precision: str
    file: str
    sha256: str
    size: int
    layout: str = "NCHW"  # the input tensor's layout, 1 x C x S x S for NCHW
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    input_quant: TensorQuant | None = None  # set when the model takes integer tensors
    output_quant: TensorQuant | None = None  # set when the model gives integer tensors
    quantization: dict[str, Any] = field(default_factory=dict)  # how it was quantized


@dataclass(frozen=True)
class Modality:
    preprocess: dict[str, Any]
    channel_order: list[str]


@dataclass(frozen=True)
class Manifest:
    format_version: int
    bits: int
    bit_order: str
    input_size: int
    modalities: dict[str, Modality]
    models: list[ModelEntry]
    centroids: FileEntry
    thresholds: dict[str, dict[str, float]]  # mode -> {"eer", "0.01", "0.001", "0.0001"} -> bits
    parity: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    # sha256 of the trained network's weights (export/weights.py): every model of a bundle
    # shares it, and only codes of the same weights can match each other (None: an older bundle)
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def files(self) -> list[FileEntry]:
        """Every file the manifest vouches for."""
        entries = [FileEntry(m.file, m.sha256, m.size) for m in self.models]
        return [*entries, self.centroids]

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        _need(isinstance(d, dict), "manifest.json: top level must be a JSON object")
        version = _get(d, "format_version", int, "manifest")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest.json: format_version {version} is not supported by this device "
                f"(it reads version {FORMAT_VERSION}); export the bundle with a matching version"
            )
        bits = _get(d, "bits", int, "manifest")
        try:
            codes.check_bits(bits)
        except ValueError as exc:
            raise BundleError(f"manifest.json: bits: {exc}") from exc
        order = _get(d, "bit_order", str, "manifest")
        if order != codes.BIT_ORDER:
            raise BundleError(
                f"manifest.json: bit_order {order!r} differs from this device's "
                f"{codes.BIT_ORDER!r}; codes would be read wrongly"
            )
        modalities = {}
        for name, m in _get(d, "modalities", dict, "manifest").items():
            where = f"modalities.{name}"
            _need(name in MODALITIES, f"manifest.json: {where}: unknown modality")
            _need(isinstance(m, dict), f"manifest.json: {where} must be an object")
            modalities[name] = Modality(
                preprocess=_get(m, "preprocess", dict, where),
                channel_order=list(_get(m, "channel_order", list, where)),
            )
        models = [
            _model_entry(m, f"models[{i}]", modalities)
            for i, m in enumerate(_get(d, "models", list, "manifest"))
        ]
        c = _get(d, "centroids", dict, "manifest")
        centroids = FileEntry(
            _get(c, "file", str, "centroids"),
            _get(c, "sha256", str, "centroids"),
            _get(c, "size", int, "centroids"),
        )
        thresholds = {
            mode: _threshold_row(row, f"thresholds.{mode}", bits * (2 if mode == "multi" else 1))
            for mode, row in _get(d, "thresholds", dict, "manifest").items()
        }
        return cls(
            format_version=version,
            bits=bits,
            bit_order=order,
            input_size=_get(d, "input_size", int, "manifest"),
            modalities=modalities,
            models=models,
            centroids=centroids,
            thresholds=thresholds,
            parity=_parity(_object(d, "parity", "manifest")),
            evaluation=_object(d, "evaluation", "manifest"),
            training=_object(d, "training", "manifest"),
            created=str(d.get("created", "")),
            weights_sha256=_weights_sha256(d.get("weights_sha256")),
        )


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise BundleError(message)


def _get(d: dict, key: str, typ: type, where: str) -> Any:
    if key not in d:
        raise BundleError(f"manifest.json: {where}.{key} is missing")
    value = d[key]
    if typ is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise BundleError(
            f"manifest.json: {where}.{key} must be {typ.__name__}, got {type(value).__name__}"
        )
    return value


def _object(d: dict, key: str, where: str) -> dict[str, Any]:
    """An optional object (absent or null: empty). An edited manifest whose ``parity`` was a
    list or a string stopped the device's start with an AttributeError traceback."""
    value = d.get(key)
    if value is None:
        return {}
    _need(
        isinstance(value, dict),
        f"manifest.json: {where}.{key} must be an object, got {type(value).__name__}",
    )
    return value


def _weights_sha256(value: Any) -> str | None:
    """The optional digest of the network's weights: the template store compares it with the
    one its templates were made with, so a malformed value is refused rather than compared."""
    if value is None:
        return None
    _need(
        isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) is not None,
        f"manifest.json: weights_sha256 must be 64 hex digits (a sha256), got {value!r}; "
        "re-export the bundle rather than editing it",
    )
    return value.lower()


def _parity(parity: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``parity`` the device reads at load: the gate, and the rows of its files."""
    gate = _object(parity, "gate", "parity")
    files = parity.get("files", [])
    failures = gate.get("failures", [])
    _need(
        isinstance(files, list) and all(isinstance(r, dict) for r in files),
        "manifest.json: parity.files must be a list of objects",
    )
    _need(
        isinstance(failures, list) and all(isinstance(f, str) for f in failures),
        "manifest.json: parity.gate.failures must be a list of strings",
    )
    return parity


def _threshold_row(row: Any, where: str, most: int) -> dict[str, float]:
    """One mode's thresholds, each a number of bits from -1 (accept nothing) to ``most`` (the
    largest distance: ``multi`` sums two codes). A value outside that, NaN or infinite, would
    make a device accept every probe or none, without a word."""
    _need(isinstance(row, dict), f"manifest.json: {where} must be an object")
    out = {}
    for key, value in row.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _need(ok, f"manifest.json: {where}.{key} must be a number, got {value!r}")
        _need(
            math.isfinite(value) and -1 <= value <= most,
            f"manifest.json: {where}.{key} is {value!r} bits; a threshold lies in [-1, {most}] "
            "for these codes (re-export the bundle rather than editing its thresholds)",
        )
        out[key] = float(value)
    return out


def _quant(d: Any, where: str) -> TensorQuant | None:
    if d is None:
        return None
    _need(isinstance(d, dict), f"manifest.json: {where} must be an object or null")
    return TensorQuant(
        _get(d, "scale", float, where),
        _get(d, "zero_point", int, where),
        str(d.get("dtype", "int8")),
    )


def _model_entry(m: Any, where: str, modalities: dict[str, Modality]) -> ModelEntry:
    _need(isinstance(m, dict), f"manifest.json: {where} must be an object")
    entry = ModelEntry(
        modality=_get(m, "modality", str, where),
        format=_get(m, "format", str, where),
        precision=_get(m, "precision", str, where),
        file=_get(m, "file", str, where),
        sha256=_get(m, "sha256", str, where),
        size=_get(m, "size", int, where),
        layout=str(m.get("layout", "NCHW")),
        input_dtype=str(m.get("input_dtype", "float32")),
        output_dtype=str(m.get("output_dtype", "float32")),
        input_quant=_quant(m.get("input_quant"), f"{where}.input_quant"),
        output_quant=_quant(m.get("output_quant"), f"{where}.output_quant"),
        quantization=_object(m, "quantization", where),
    )
    _need(
        entry.modality in modalities,
        f"manifest.json: {where}.modality {entry.modality!r} has no entry under modalities",
    )
    _need(entry.format in FORMATS, f"manifest.json: {where}.format {entry.format!r} unknown")
    _need(
        entry.precision in PRECISIONS,
        f"manifest.json: {where}.precision {entry.precision!r} unknown",
    )
    _need(entry.layout in ("NCHW", "NHWC"), f"manifest.json: {where}.layout {entry.layout!r}")
    return entry
