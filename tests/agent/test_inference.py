"""Backends on real onnxruntime and the real TFLite runtime, with models built here.

One tiny conv net is exported four ways (ONNX fp32, TFLite fp32 NCHW, TFLite fp32 NHWC, TFLite
int8 through the PT2E quantiser); a hand-written ONNX graph with uint8 input and output checks
that quantisation parameters are read from the graph.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent import codes
from agent.inference import open_backend
from agent.inference.base import layout_of, quantise
from agent.preprocess import DEFAULT_SPEC, preprocess

from .conftest import watch_infer

torch = pytest.importorskip("torch")

BITS = 32
FP32_AGREEMENT = 0.99  # fp32 runtimes: at most ~1 bit in 100 may flip on a near-zero output
INT8_AGREEMENT = 0.85  # int8 vs fp32 on an uncalibrated toy net


class TinyNet(torch.nn.Module):
    def __init__(self, nhwc: bool = False) -> None:
        super().__init__()
        self.nhwc = nhwc
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4, padding=2)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, BITS)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _rois(n: int, seed: int) -> np.ndarray:
    """Smooth random grey ROIs with line texture, like a palm ROI more than white noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = cv2.GaussianBlur(rng.normal(128, 50, (128, 128)), (0, 0), 6)
        lines = cv2.GaussianBlur(rng.normal(0, 60, (128, 128)), (0, 0), 1.5)
        out.append(np.clip(base + lines, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = TinyNet().eval()
    sample = torch.zeros(1, 3, 128, 128)
    paths = {"onnx": d / "m.onnx"}
    torch.onnx.export(
        net,
        (sample,),
        str(paths["onnx"]),
        dynamo=False,
        input_names=["x"],
        output_names=["u"],
        dynamic_axes={"x": {0: "n"}, "u": {0: "n"}},
    )
    paths["tflite"] = d / "m.tflite"
    litert_torch.convert(net, (sample,)).export(str(paths["tflite"]))

    nhwc = TinyNet(nhwc=True).eval()
    nhwc.load_state_dict(net.state_dict())
    paths["tflite_nhwc"] = d / "m_nhwc.tflite"
    litert_torch.convert(nhwc, (sample.permute(0, 2, 3, 1),)).export(str(paths["tflite_nhwc"]))

    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config())
    q = quantize_pt2e.prepare_pt2e(torch.export.export(net, (sample,)).module(), quantizer)
    for roi in _rois(16, seed=99):
        q(torch.from_numpy(preprocess(roi)[None]))
    q = quantize_pt2e.convert_pt2e(q, fold_quantize=False)
    paths["tflite_int8"] = d / "m_int8.tflite"
    litert_torch.convert(q, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(paths["tflite_int8"])
    )
    return net, paths


def _reference(net, rois: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.stack([preprocess(r) for r in rois]))
    with torch.no_grad():
        return net(x).numpy()


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((codes.unpack(a, BITS) == codes.unpack(b, BITS)).mean())


def test_onnx_and_tflite_give_the_same_codes(models):
    net, paths = models
    rois = _rois(24, seed=1)
    ref = _reference(net, rois)
    with open_backend(paths["onnx"]) as ob, open_backend(paths["tflite"]) as tb:
        assert (ob.runtime, tb.runtime) == ("onnxruntime", "tflite")
        assert ob.layout == tb.layout == "NCHW"
        np.testing.assert_allclose(ob.outputs(rois), ref, atol=1e-4)
        np.testing.assert_allclose(tb.outputs(rois), ref, atol=1e-4)
        got = ob.hash(rois)
        assert got.shape == (24, 1) and got.dtype == np.uint32
        agree = _agreement(got, tb.hash(rois))
    print(f"onnx_vs_tflite_fp32_bit_agreement={agree:.4f}")
    assert agree >= FP32_AGREEMENT


def test_onnx_workers_sleep_between_runs(models):
    # a spinning intra-op pool kept the ROI search off its core (bench/e2e.py)
    with open_backend(models[1]["onnx"], threads=2) as ob:
        opts = ob.session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 2


def test_onnx_optimization_extended_skips_the_layout_pass_with_the_same_outputs(models):
    """ "extended" trades speed for memory (no reordered copy of the fp32 weights); the network
    it runs is the same one."""
    import onnxruntime as ort

    net, paths = models
    rois = _rois(8, seed=4)
    with (
        open_backend(paths["onnx"], onnx_optimization="extended") as small,
        open_backend(paths["onnx"]) as fast,
    ):
        levels = [b.session.get_session_options().graph_optimization_level for b in (small, fast)]
        assert levels == [
            ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ]
        np.testing.assert_allclose(small.outputs(rois), fast.outputs(rois), atol=1e-4)
        np.testing.assert_allclose(small.outputs(rois), _reference(net, rois), atol=1e-4)
    with pytest.raises(ValueError, match="unknown onnx optimization"):
        open_backend(paths["onnx"], onnx_optimization="basic")


def test_nhwc_model_is_fed_nhwc(models):
    net, paths = models
    rois = _rois(5, seed=2)
    with open_backend(paths["tflite_nhwc"]) as b:
        assert b.layout == "NHWC"
        assert b.input.shape == (1, 128, 128, 3)
        np.testing.assert_allclose(b.outputs(rois), _reference(net, rois), atol=1e-4)


def test_int8_reads_bits_against_the_zero_point(models):
    net, paths = models
    rois = _rois(24, seed=3)
    with open_backend(paths["tflite_int8"], threads=2) as b:
        assert b.input.dtype == np.int8 and b.input.quantised
        assert b.output.dtype == np.int8 and b.output.quantised
        raw = b.run(b.tensor(rois))
        assert raw.dtype == np.int8
        got = b.hash(rois)
        np.testing.assert_array_equal(got, codes.pack(raw > b.output.zero_point))
        np.testing.assert_array_equal(got, codes.pack(b.outputs(rois) > 0))
        ref_codes = codes.pack(_reference(net, rois))
        agree = _agreement(got, ref_codes)
    print(f"int8_vs_fp32_bit_agreement={agree:.4f} output_zero_point={b.output.zero_point}")
    assert agree >= INT8_AGREEMENT


def _model_input_reference(be, rois) -> np.ndarray:
    """The float chain the table lookup replaces: normalise, to the model's layout, quantise."""
    x = be.tensor(rois)
    if be.layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return quantise(x, be.input) if be.input.quantised else x


def _mixed_rois() -> list[np.ndarray]:
    """Grey, grey with a band axis, three different bands, and an off-size ROI to be resized."""
    grey = _rois(3, seed=11)
    bands = np.stack([grey[0], 255 - grey[1], grey[2]], axis=2)
    return [grey[0], grey[1][:, :, None], bands, np.ascontiguousarray(grey[2][:100, :90])]


@pytest.mark.parametrize("name", ["onnx", "tflite", "tflite_nhwc", "tflite_int8", "onnx_uint8"])
def test_table_lookup_feeds_the_model_what_the_float_chain_does(models, tmp_path, name):
    if name == "onnx_uint8":
        path = tmp_path / "u8.onnx"
        rng = np.random.default_rng(4)
        w = rng.normal(0, 0.05, (BITS, 3, 8, 8)).astype(np.float32)
        _uint8_onnx(path, w, np.zeros(BITS, np.float32), (0.02, 128), (0.01, 131))
    else:
        path = models[1][name]
    with open_backend(path) as be:
        for roi in _mixed_rois():
            got, want = be.feed([roi]), _model_input_reference(be, [roi])
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        rois = _rois(4, seed=12)
        np.testing.assert_array_equal(be.feed(rois), _model_input_reference(be, rois))
        np.testing.assert_array_equal(be.hash(rois), codes.pack(be.outputs(rois) > 0))


def _uint8_onnx(path, w: np.ndarray, b: np.ndarray, in_q, out_q) -> None:
    """x uint8 (n,3,128,128) -> Dequantize -> Conv 8x8/8 -> mean -> Flatten -> Quantize u8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.float32(in_q[0]), "xs"),
        numpy_helper.from_array(np.uint8(in_q[1]), "xz"),
        numpy_helper.from_array(np.float32(out_q[0]), "ys"),
        numpy_helper.from_array(np.uint8(out_q[1]), "yz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
        helper.make_node("Conv", ["xf", "w", "b"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("QuantizeLinear", ["f", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "u8",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 3, 128, 128])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n", BITS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_uint8_io_reads_scale_and_zero_point_from_graph(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, (BITS, 3, 8, 8)).astype(np.float32)
    bias = rng.normal(0, 0.1, BITS).astype(np.float32)
    in_q, out_q = (0.02, 128), (0.01, 131)
    path = tmp_path / "u8.onnx"
    _uint8_onnx(path, w, bias, in_q, out_q)
    rois = _rois(6, seed=5)
    with open_backend(path) as be:
        assert (be.input.scale, be.input.zero_point) == pytest.approx(in_q)
        assert (be.output.scale, be.output.zero_point) == pytest.approx(out_q)
        x = be.tensor(rois)
        xq = np.clip(np.round(x / in_q[0]) + in_q[1], 0, 255)
        xf = (xq - in_q[1]) * in_q[0]
        # numpy reference of the same graph on the dequantised input
        patches = xf.reshape(6, 3, 16, 8, 16, 8)
        ref = np.einsum("ncyhxw,kchw->nk", patches, w) / (16 * 16) + bias
        np.testing.assert_allclose(be.outputs(rois), ref, atol=out_q[0])
        raw = be.run(x)
        np.testing.assert_array_equal(be.hash(rois), codes.pack(raw > out_q[1]))
        # reading '> 0' on a uint8 output would set almost every bit: the zero point matters
        assert (codes.unpack(be.hash(rois), BITS).mean()) < 0.9


def test_layout_and_open_errors(tmp_path, models):
    _, paths = models
    with pytest.raises(ValueError, match="unknown runtime"):
        open_backend(paths["onnx"], runtime="tensorrt")
    with pytest.raises(FileNotFoundError):
        open_backend(tmp_path / "missing.onnx")
    with open_backend(paths["onnx"]) as b:
        bad = type(b.input)("x", (1, 3, 96, 96), np.dtype(np.float32))
        with pytest.raises(ValueError, match="neither NCHW nor NHWC"):
            layout_of(bad, DEFAULT_SPEC)
    # the same file through the runtime named explicitly
    with open_backend(paths["tflite"], runtime="ai_edge_litert") as b:
        assert b.hash(_rois(3, seed=6)).shape == (3, 1)


def test_spec_from_the_manifest_is_applied(tmp_path):
    """A 1-channel 64x64 model with its own mean/std: the spec, not the defaults, is used."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from agent.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict({"input_size": 64, "channels": 1, "mean": [0.5], "std": [0.25]})
    w = np.random.default_rng(7).normal(0, 0.01, (16, 64 * 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
        ],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "lin.onnx"))
    rois = _rois(3, seed=8)  # 128x128, resized by the spec
    with open_backend(tmp_path / "lin.onnx", spec=spec) as be:
        x = np.stack([preprocess(r, spec) for r in rois]).reshape(3, -1)
        np.testing.assert_allclose(be.outputs(rois), x @ w.T, rtol=1e-4, atol=1e-4)
        assert be.hash(rois).shape == (3, 1)
        colour = np.stack([rois[0], rois[1], rois[2]], axis=2)  # averaged for one channel
        for roi in (rois[0], colour):
            np.testing.assert_array_equal(be.feed([roi]), _model_input_reference(be, [roi]))
    with pytest.raises(ValueError, match="neither NCHW nor NHWC"):
        open_backend(tmp_path / "lin.onnx")  # the default 3x128x128 spec does not fit


def test_exporter_converters_agree_across_runtimes(tmp_path):
    """The exporter's own ONNX/TFLite converters on the tiny backbone, fp32 and int8."""
    convert_onnx = pytest.importorskip("export.convert_onnx")
    convert_tflite = pytest.importorskip("export.convert_tflite")
    from export.backbones import create_backbone

    torch.manual_seed(1)
    net = create_backbone("tiny", BITS).eval()
    rois = _rois(32, seed=9)
    calib = np.stack([preprocess(r) for r in _rois(16, seed=10)])
    p = {k: tmp_path / k for k in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite")}
    convert_onnx.export_fp32(net, 3, 128, p["fp32.onnx"])
    convert_onnx.quantize_int8(p["fp32.onnx"], p["int8.onnx"], calib)
    convert_tflite.export_fp32(net, 3, 128, p["fp32.tflite"])
    convert_tflite.export_int8(net, calib, p["int8.tflite"])
    with torch.no_grad():
        ref = codes.pack(net(torch.from_numpy(np.stack([preprocess(r) for r in rois]))).numpy())
    got = {}
    for name, path in p.items():
        with open_backend(path) as be:
            got[name] = be.hash(rois)
    agree = {k: _agreement(v, ref) for k, v in got.items()}
    print(
        "exporter_tiny_bit_agreement_vs_torch " + " ".join(f"{k}={v:.4f}" for k, v in agree.items())
    )
    assert agree["fp32.onnx"] >= FP32_AGREEMENT and agree["fp32.tflite"] >= FP32_AGREEMENT
    assert _agreement(got["fp32.onnx"], got["fp32.tflite"]) >= FP32_AGREEMENT
    assert agree["int8.onnx"] >= INT8_AGREEMENT and agree["int8.tflite"] >= INT8_AGREEMENT


def test_replayed_video_to_codes_matches_the_true_roi(models, tmp_path):
    """capture -> roi -> quality -> inference on a real video: the code of the ROI the search
    finds agrees with the code of the ground-truth ROI."""
    import cv2

    hands = pytest.importorskip("export.synth.hands")
    from agent import quality, roi
    from agent.capture import EndOfStream
    from agent.capture.replay import ReplaySource

    hands.write_hand_frames(tmp_path, ids=4, samples=2, level="medium", seed=2, video=True)
    truths = json.loads((tmp_path / "print.json").read_text())
    found, true_rois = [], []
    with ReplaySource(tmp_path / "print.avi") as src:
        while True:
            try:
                frame = src.read()
            except EndOfStream:
                break
            res = roi.extract(frame.image)
            assert quality.assess(frame.image, res).ok
            t = truths[frame.index]
            sq = roi.RoiSquare(tuple(t["centre"]), t["side"], t["angle_deg"])
            found.append(res.roi)
            true_rois.append(roi.cut(frame.image, sq))
    assert len(found) == 8
    # at the scale of the creases (a 2% shift decorrelates the finest wrinkles)
    smooth = [cv2.GaussianBlur(r, (0, 0), 2).ravel() for r in found + true_rois]
    corr = np.corrcoef(np.stack(smooth).astype(float))[:8, 8:]
    same, cross = np.diag(corr), corr[~np.eye(8, dtype=bool)]
    print(f"found_vs_true_roi_pixel_corr min={same.min():.3f} other_frames_max={cross.max():.3f}")
    assert same.min() > 0.7 and same.min() > cross.max() + 0.2
    with open_backend(models[1]["onnx"]) as be:
        got, want = be.hash(found), be.hash(true_rois)
    agree = _agreement(got, want)
    print(f"found_vs_true_roi_bit_agreement={agree:.4f} distinct_codes={len(np.unique(want))}")
    assert len(np.unique(want)) > 1  # the toy net does tell these frames apart
    assert agree >= 0.9


def test_tflite_runtime_fallback_gives_the_same_codes_or_a_clear_error(models):
    """tflite-runtime is the fallback TFLite package; its last wheels need numpy 1.x."""
    pytest.importorskip("tflite_runtime.interpreter")
    _, paths = models
    rois = _rois(4, seed=8)
    with open_backend(paths["tflite_int8"], runtime="ai_edge_litert") as ref:
        want = ref.hash(rois)
    try:
        with open_backend(paths["tflite_int8"], runtime="tflite_runtime") as fb:
            assert type(fb.interpreter).__module__.startswith("tflite_runtime")
            np.testing.assert_array_equal(fb.hash(rois), want)
    except RuntimeError as e:
        assert np.__version__.startswith("2")
        for hint in (
            "numpy 1.x",
            "ai-edge-litert",
            "bundle.runtime: onnx",
            str(paths["tflite_int8"]),
        ):
            assert hint in str(e)


def test_unknown_tflite_package_is_refused():
    from agent.inference.tflite_backend import interpreter_class

    with pytest.raises(ValueError, match="unknown TFLite package"):
        interpreter_class("tensorflow")


def _resident_kb(path) -> int:
    """This process's resident kB of mappings of ``path`` (the kernel's own count)."""
    target, total, current = str(path.resolve()), 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and head[1][:1] in "r-":
                current = head[5].strip() if len(head) == 6 else None
            elif head[0] == "Rss:" and current == target:
                total += int(head[1])
    return total


@pytest.mark.parametrize("name", ["tflite", "tflite_int8"])
def test_tflite_model_pages_are_released_once_loaded_with_the_same_outputs(
    models, name, monkeypatch
):
    """The interpreter maps the model file and XNNPACK packs its own copy of the weights; the
    mapped copy is dropped from this process once loaded, and nothing the model computes
    changes (the pages would be read back from the file if anything still used them)."""
    from agent.inference import tflite_backend

    path = models[1][name]
    rois = _rois(8, seed=12)
    with monkeypatch.context() as m:
        m.setattr(tflite_backend, "release_mapped", lambda p: 0)
        with open_backend(path) as kept:
            want = kept.outputs(rois)
            assert _resident_kb(path) > 0  # what a loaded interpreter holds otherwise
    assert _resident_kb(path) == 0  # the reference interpreter is gone, and its mapping
    with open_backend(path) as be:
        assert be.interpreter is not None and _resident_kb(path) == 0
        np.testing.assert_array_equal(be.outputs(rois), want)
        print(f"{name} resident_kb_after_inference={_resident_kb(path)}")
    assert tflite_backend.release_mapped(path) == 0  # no mapping left: nothing to release


@pytest.mark.parametrize("name", ["onnx", "tflite_int8"])
def test_the_runtime_lets_two_models_run_side_by_side(models, name):
    """Running a capture's two models at once rests on the runtime letting go of the
    interpreter lock while a model runs: the worker's run and this thread's overlap in time
    (they never could under the lock), and each gives what it gives alone."""
    from agent.inference.concurrent import Runner

    _, paths = models
    first, second = open_backend(paths[name], threads=1), open_backend(paths[name], threads=1)
    spans = {id(first): watch_infer(first), id(second): watch_infer(second)}
    x1, x2 = first.feed(_rois(16, seed=3)), second.feed(_rois(16, seed=4))
    alone = (first.infer(x1), second.infer(x2))
    for s in spans.values():
        s.clear()
    runner = Runner(concurrent=True)
    try:
        for _ in range(10):
            results = [runner.start(first, x1, last=False), runner.start(second, x2, last=True)]
            assert all(np.array_equal(r(), a) for r, a in zip(results, alone, strict=True))
    finally:
        runner.close()
        first.close()
        second.close()
    overlapping = sum(
        a[1] < b[2] and b[1] < a[2]
        for a, b in zip(spans[id(first)], spans[id(second)], strict=True)
    )
    print(f"{name}: {overlapping}/10 captures ran their two models side by side")
    assert overlapping >= 5, spans
