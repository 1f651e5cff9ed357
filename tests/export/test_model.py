from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from export.backbones import BACKBONES, create_backbone, n_parameters
from export.model import PalmCohashNet, create_model, load_pretrained


def test_res18_has_torchvision_names():
    keys = set(create_backbone("res18", 32).state_dict())
    for name in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert name in keys
    # ResNet-18 body (11.18 M without the 1000-class head) + a 512x32 head
    assert n_parameters(create_backbone("res18", 32)) == 11_176_512 + 512 * 32 + 32


@pytest.mark.parametrize("bits", [16, 32, 64, 128])
def test_every_backbone_gives_bits_outputs(bits):
    x = torch.zeros(2, 3, 128, 128)
    for name in BACKBONES:
        assert create_backbone(name, bits).eval()(x).shape == (2, bits)


def test_light_backbone_fits_a_pi_and_uses_plain_ops():
    net = create_backbone("light", 32)
    assert n_parameters(net) <= 2_000_000
    allowed = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d)
    allowed += (torch.nn.AdaptiveAvgPool2d, torch.nn.Linear, torch.nn.Sequential, torch.nn.Identity)
    leaves = [m for m in net.modules() if not list(m.children())]
    assert all(isinstance(m, allowed) for m in leaves)


def test_light_stem_is_a_patch_conv_that_can_keep_every_pixel():
    """int8 gains little on a 3-channel input, so the stem must be cheap: stride = kernel."""
    stem = create_backbone("light", 32).conv1
    k = stem.kernel_size[0]
    assert stem.stride == stem.kernel_size == (k, k) and stem.padding == (0, 0)
    assert stem.out_channels >= k * k * stem.in_channels


def test_light_quantizes_to_integer_kernels_in_both_converters(tmp_path):
    """No layer of light may stay float in onnxruntime's or litert-torch's int8 model."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    from export import convert_onnx, convert_tflite

    torch.manual_seed(0)
    net = create_backbone("light", 32).eval()
    calib = np.random.default_rng(0).standard_normal((4, 3, 128, 128)).astype(np.float32)
    fp32, int8, tfl = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "int8.tflite"
    convert_onnx.export_fp32(net, 3, 128, fp32)
    convert_onnx.quantize_int8(fp32, int8, calib)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "int8.optimized.onnx")
    ort.InferenceSession(str(int8), sess_options=opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert ops["QLinearConv"] == n_convs and ops["Conv"] == ops["FusedConv"] == 0, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops

    convert_tflite.export_int8(net, calib, tfl)
    it = interpreter.Interpreter(model_path=str(tfl))
    floats = [t["name"] for t in it.get_tensor_details() if np.dtype(t["dtype"]).kind == "f"]
    assert floats == []


def test_two_paths_with_separate_weights():
    model = create_model("tiny", 32)
    assert model.print_net is not model.vein_net
    assert not torch.equal(model.print_net.fc.weight, model.vein_net.fc.weight)
    x = torch.randn(3, 3, 128, 128)
    up, uv = model.eval()(x, x)
    assert up.shape == uv.shape == (3, 32) and not torch.allclose(up, uv)
    up, uv = model(x, None)
    assert uv is None and up.shape == (3, 32)


def test_pretrained_state_dict_loads_all_but_the_head(tmp_path):
    donor = create_backbone("res18", 1000)  # an ImageNet-shaped state dict
    path = tmp_path / "resnet18.pth"
    torch.save(donor.state_dict(), path)
    model = PalmCohashNet("res18", 32, {"print": 3, "vein": 1})
    skipped = load_pretrained(model, path)
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(model.print_net.layer3[1].conv2.weight, donor.layer3[1].conv2.weight)
    mean_conv1 = donor.conv1.weight.mean(dim=1, keepdim=True)
    assert torch.allclose(model.vein_net.conv1.weight, mean_conv1)


def test_pretrained_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="torchvision ResNet-18"):
        load_pretrained(create_model("tiny", 32), path)


def test_checkpoint_of_an_earlier_light_is_refused_with_what_to_do(tmp_path):
    """A light checkpoint from before the patch stem must not fail with a bare size mismatch."""
    from export.checkpoint import load_checkpoint, save_checkpoint

    model = create_model("light", 32)
    meta = {"labels": [0], "preprocess": {}, "split": {}, "dataset": {}}
    path = save_checkpoint(tmp_path / "old.pt", model, np.ones((1, 32), np.int8), meta)
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["print_net.conv1.weight"] = torch.zeros(32, 3, 7, 7)  # the 7x7 stem
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"earlier version of it\); retrain it"):
        load_checkpoint(path)


def test_a_pretrained_file_missing_cut_short_or_of_another_kind_is_named(tmp_path, capsys):
    """--pretrained naming a missing file, a download cut short or a bare tensor ended the
    training command in a FileNotFoundError, zip or pickle traceback after the data set was
    read; and one of another network in a ValueError traceback."""
    from export.train import main

    good = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:100])
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    root = tmp_path / "data"
    for i in range(1, 3):
        (root / "IITD" / f"{i:04d}").mkdir(parents=True)
        for j in range(1, 5):
            cv2.imwrite(
                str(root / "IITD" / f"{i:04d}" / f"{j}.bmp"), np.full((8, 8), 9 * j, np.uint8)
            )
    argv = ["--ds", "iitd", "--data-root", str(root), "--model", "tiny", "--device", "cpu"]
    argv += ["--threads", "1", "--epoch", "1", "-b", "4", "--out", str(tmp_path / "run")]
    for name, says in (
        ("missing.pth", "No such file or directory; pass a backbone state dict"),
        ("cut.pth", "cannot be read as a state dict"),
        ("tensor.pth", "holds a Tensor; pass a backbone state dict"),
        ("other.pth", "no parameter matches the 'tiny' backbone"),
    ):
        assert main([*argv, "--pretrained", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and str(tmp_path / name) in err and says in err, err
