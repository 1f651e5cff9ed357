"""PalmCohashNet: a palm-print and a palm-vein hashing network, same design, separate weights.

Both map an ROI to K real outputs; the co-hash is their sign pattern (agent.codes.pack), and both
are trained towards one shared centroid per identity, so a print code and a vein code of the same
palm land close together and either modality can match the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from export.backbones import create_backbone

logger = logging.getLogger(__name__)

MODALITIES = ("print", "vein")


class PalmCohashNet(nn.Module):
    def __init__(self, backbone: str, bits: int, in_channels: dict[str, int] | None = None) -> None:
        super().__init__()
        ch = {"print": 3, "vein": 3, **(in_channels or {})}
        self.backbone = backbone
        self.bits = bits
        self.in_channels = {m: int(ch[m]) for m in MODALITIES}
        self.print_net = create_backbone(backbone, bits, self.in_channels["print"])
        self.vein_net = create_backbone(backbone, bits, self.in_channels["vein"])

    def forward(
        self, print_x: torch.Tensor | None, vein_x: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Either input may be None (a print-only data set, or encoding one modality)."""
        u_print = None if print_x is None else self.print_net(print_x)
        u_vein = None if vein_x is None else self.vein_net(vein_x)
        return u_print, u_vein

    def arch(self) -> dict:
        return {"backbone": self.backbone, "bits": self.bits, "in_channels": dict(self.in_channels)}


def create_model(name: str, bits: int, in_channels: dict[str, int] | None = None) -> PalmCohashNet:
    return PalmCohashNet(name, bits, in_channels)


def load_pretrained(model: PalmCohashNet, path: str | Path) -> list[str]:
    """Start both paths from one backbone state dict (e.g. torchvision ImageNet ResNet-18).

    Tensors whose shape differs (the ``fc`` head, whose size is the code length; ``conv1`` when
    the input has other than 3 channels is averaged over channels instead) are skipped. Returns the
    names that were not loaded, so the caller can log them.
    """
    from export.checkpoint import CheckpointError  # export.checkpoint imports this module

    want = "pass a backbone state dict (a torchvision ResNet-18's .pth)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"--pretrained {path}: {exc.strerror}; {want}") from exc
    except Exception as exc:  # torch names no one error: zip, pickle, EOF errors
        # a download cut short, or a file holding more than tensors (a training checkpoint)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"--pretrained {path} cannot be read as a state dict ({first}); {want}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--pretrained {path} holds a {type(state).__name__}; {want}")
    skipped: list[str] = []
    for net in (model.print_net, model.vein_net):
        own = net.state_dict()
        take = {}
        for name, tensor in state.items():
            if name not in own:
                continue
            if name == "conv1.weight" and tensor.shape[1] != own[name].shape[1]:
                tensor = tensor.mean(dim=1, keepdim=True).expand_as(own[name]).clone()
            if tensor.shape == own[name].shape:
                take[name] = tensor
        net.load_state_dict(take, strict=False)
        skipped = sorted(set(own) - set(take))
    if not any(k in state for k in model.print_net.state_dict()):
        raise CheckpointError(
            f"{path}: no parameter matches the {model.backbone!r} backbone; expected names like "
            "conv1.weight, layer1.0.conv1.weight (a torchvision ResNet-18 state dict)"
        )
    logger.info("pretrained loaded=%s skipped=%s", path, ",".join(skipped) or "-")
    return skipped
