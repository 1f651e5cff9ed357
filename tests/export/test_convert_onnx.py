"""export.convert_onnx: the fp32 graph is BatchNorm-folded with every conv parameter an
initializer, and onnxruntime runs the int8 model as fused integer kernels (not dequantized)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from export import convert_onnx
    from export.backbones import create_backbone

    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = create_backbone("tiny", 16).eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, 3, 128, 128)).astype(np.float32)
    fp32, int8 = d / "fp32.onnx", d / "int8.onnx"
    convert_onnx.export_fp32(net, 3, 128, fp32)
    info = convert_onnx.quantize_int8(fp32, int8, calib)
    return {"net": net, "calib": calib, "fp32": fp32, "int8": int8, "info": info, "dir": d}


def _n_convs(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def test_fp32_graph_is_folded_and_conv_parameters_are_initializers(exported: dict) -> None:
    graph = onnx.load(str(exported["fp32"])).graph
    ops = Counter(n.op_type for n in graph.node)
    inits = {t.name for t in graph.initializer}
    assert ops["BatchNormalization"] == 0
    assert ops["Identity"] == 0
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == _n_convs(exported["net"])
    for conv in convs:
        assert len(conv.input) == 3, f"{conv.name} has no folded bias"
        assert conv.input[1] in inits and conv.input[2] in inits, conv.name


def test_fp32_onnx_equals_torch(exported: dict) -> None:
    x = exported["calib"][:2]
    with torch.no_grad():
        want = exported["net"](torch.from_numpy(x)).numpy()
    sess = _session(exported["fp32"])
    got = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_int8_runs_as_fused_integer_kernels(exported: dict) -> None:
    optimized = exported["dir"] / "int8.optimized.onnx"
    _session(exported["int8"], optimized)
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["QLinearConv"] == _n_convs(exported["net"]), ops
    # only the float input is quantized and the float output dequantized
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops
    assert exported["info"]["activations"].startswith("uint8")


def test_int8_tracks_fp32(exported: dict) -> None:
    x = exported["calib"][:1]
    ref = _session(exported["fp32"]).run(None, {"input": x})[0].ravel()
    got = _session(exported["int8"]).run(None, {"input": x})[0].ravel()
    assert np.corrcoef(ref, got)[0, 1] > 0.95


def _weight_types(path: Path) -> set[int]:
    """Element types of the quantized weights (the initializers read by DequantizeLinear,
    less the biases, which are int32 either way)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    types = {
        inits[n.input[0]].data_type
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dims
    }
    return types - {onnx.TensorProto.INT32}


def test_weight_type_is_chosen_and_recorded(exported: dict) -> None:
    from export import convert_onnx

    assert _weight_types(exported["int8"]) == {onnx.TensorProto.UINT8}
    assert exported["info"]["weights"] == "uint8 per-channel"
    signed = exported["dir"] / "int8.s8.onnx"
    info = convert_onnx.quantize_int8(exported["fp32"], signed, exported["calib"], "int8")
    assert _weight_types(signed) == {onnx.TensorProto.INT8}
    assert info["weights"] == "int8 per-channel"
    x = exported["calib"][:1]
    ref = _session(exported["fp32"]).run(None, {"input": x})[0].ravel()
    got = _session(signed).run(None, {"input": x})[0].ravel()
    assert np.corrcoef(ref, got)[0, 1] > 0.95
    with pytest.raises(ValueError, match="must be one of"):
        convert_onnx.quantize_int8(exported["fp32"], signed, exported["calib"], "int4")
