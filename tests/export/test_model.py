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
    allowed += (torch.nn.AdaptiveAvgPool2d, torch.nn.Linear, torch.nn.Sequential)
    leaves = [m for m in net.modules() if not list(m.children())]
    assert all(isinstance(m, allowed) for m in leaves)


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
