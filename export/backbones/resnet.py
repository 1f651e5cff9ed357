"""ResNet family in plain torch, with torchvision's parameter names.

``res18`` is ResNet-18 exactly (conv1, bn1, layer1.0.conv1, …, fc), so an ImageNet state dict
saved from torchvision loads into it (all but ``fc``, whose size is the code length). ``light``
and ``tiny`` have fewer channels and one block per stage: ``light`` stays under 2 M parameters
per path for a Raspberry Pi and, having no depthwise convolutions, trains fast on a CPU and
quantizes to int8 without per-channel surprises; ``tiny`` is for tests.

``light`` replaces ImageNet's 7x7 stride-2 stem and max-pool by a patch stem: one 4x4 stride-4
convolution from the 3 input channels to 48 = 4·4·3 (so it can keep every input pixel). Both
stems reach the same 32x32 grid, but the 7x7 one spent most of the fp32 time on 3 input
channels at 64x64, where int8 kernels gain almost nothing; with the patch stem the time sits in
the 3x3 convolutions that int8 speeds up, so int8 runs at about 0.4x fp32 in onnxruntime and
TFLite instead of 0.55-0.9x, while fp32 stays as fast as before (``bench/infer.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with one BasicBlock stage per width; ``patch_stem`` = (kernel=stride, channels).

    Without ``patch_stem`` the stem is ImageNet's (7x7 stride 2, then 3x3 max-pool stride 2).
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        bits: int,
        in_channels: int = 3,
        patch_stem: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.maxpool: nn.Module
        if patch_stem is None:
            inplanes = widths[0]
            self.conv1 = nn.Conv2d(in_channels, inplanes, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            patch, inplanes = patch_stem
            self.conv1 = nn.Conv2d(in_channels, inplanes, patch, patch, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(inplanes, w, 1 if i == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = w
        self.n_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, bits)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def res18(bits: int, in_channels: int = 3) -> ResNet:
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), bits, in_channels)


def light(bits: int, in_channels: int = 3) -> ResNet:
    return ResNet((48, 64, 128, 256), (1, 1, 1, 1), bits, in_channels, patch_stem=(4, 48))


def tiny(bits: int, in_channels: int = 3) -> ResNet:
    return ResNet((8, 16, 32, 64), (1, 1, 1, 1), bits, in_channels)
