"""ResNet family in plain torch, with torchvision's parameter names.

``res18`` is ResNet-18 exactly (conv1, bn1, layer1.0.conv1, …, fc), so an ImageNet state dict
saved from torchvision loads into it (all but ``fc``, whose size is the code length). ``light``
and ``tiny`` are the same design with fewer channels and one block per stage: ``light`` stays
under 2 M parameters per path for a Raspberry Pi and, having no depthwise convolutions, trains
fast on a CPU and quantizes to int8 without per-channel surprises; ``tiny`` is for tests.
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
    def __init__(
        self, widths: tuple[int, ...], blocks: tuple[int, ...], bits: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
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
    return ResNet((32, 64, 128, 256), (1, 1, 1, 1), bits, in_channels)


def tiny(bits: int, in_channels: int = 3) -> ResNet:
    return ResNet((8, 16, 32, 64), (1, 1, 1, 1), bits, in_channels)
