"""Backbones by name: each maps an image (N, C, S, S) to K real outputs, one per code bit.

A new backbone is one small module plus one entry in ``BACKBONES``. Every backbone is plain
Conv/BN/ReLU/add/avgpool/linear so that ONNX and TFLite conversion and int8 quantization need no
custom operators on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from export.backbones.resnet import light, res18, tiny

BACKBONES: dict[str, Callable[..., nn.Module]] = {"res18": res18, "light": light, "tiny": tiny}


def create_backbone(name: str, bits: int, in_channels: int = 3) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](bits=bits, in_channels=in_channels)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
