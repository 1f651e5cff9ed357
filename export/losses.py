"""The co-learning objective of PalmCohashNet, as the paper and its reference code define it.

Per modality, central similarity quantization: BCE between (tanh(u)+1)/2 and the identity's
centroid mapped to {0, 1}, plus λ·mean((|tanh u| − 1)²) pulling every output towards ±1.
(tanh(u)+1)/2 equals sigmoid(2u), so the BCE is computed from the logits 2u, which is the same
value without the overflow of log(0) once |u| is large.

Across modalities, a contrastive term between the print outputs of a batch and a shuffled copy of
its vein outputs: pairs of one identity are pulled together (squared Euclidean distance), others
pushed beyond ``margin``. It works on the raw outputs u, as the reference does.

Int8 export: a bit flips when quantizing the output moves u across 0, i.e. for |u| below about
one output quantization step (max|u| / 127). The quantization term pushes |u| up, but slowly and
not for uncertain bits. An optional hinge, ``bit_margin_weight``·mean(relu(bit_margin − |u|)),
keeps every output at least ``bit_margin`` from 0. It is off by default (the reference has no such
term); ``evaluate`` reports the share of outputs within one int8 step of 0 either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    quant_weight: float = 0.1  # λ
    cross_weight: float = 1e-4  # w
    margin: float = 2.0
    bit_margin: float = 1.0
    bit_margin_weight: float = 0.0


def csq_loss(u: torch.Tensor, centroids: torch.Tensor, quant_weight: float = 0.1) -> torch.Tensor:
    """u (N, K) real outputs, centroids (N, K) ±1 of each sample's identity."""
    target = (centroids.to(u.dtype) + 1.0) / 2.0
    bce = F.binary_cross_entropy_with_logits(2.0 * u, target)
    quant = (torch.tanh(u).abs() - 1.0).pow(2).mean()
    return bce + quant_weight * quant


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 2.0
) -> torch.Tensor:
    """Mean of d² for same-identity rows and max(0, margin − d)² for the others; d = ‖a − b‖."""
    d = F.pairwise_distance(a, b)
    same = same.to(a.dtype)
    return (same * d.pow(2) + (1.0 - same) * F.relu(margin - d).pow(2)).mean()


def bit_margin_loss(u: torch.Tensor, bit_margin: float = 1.0) -> torch.Tensor:
    """Mean hinge below |u| = bit_margin: zero once every output is that far from the boundary."""
    return F.relu(bit_margin - u.abs()).mean()


def cohash_loss(
    u_print: torch.Tensor,
    u_vein: torch.Tensor | None,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    cfg: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total = L_print + L_vein + w·L_cross (+ the optional bit margin); a print-only batch
    (u_vein None) has no vein or cross term."""
    c = centroids[labels]
    parts = {"print": csq_loss(u_print, c, cfg.quant_weight)}
    if u_vein is not None:
        parts["vein"] = csq_loss(u_vein, c, cfg.quant_weight)
        perm = torch.randperm(len(labels), generator=generator, device="cpu").to(labels.device)
        parts["cross"] = contrastive_loss(u_print, u_vein[perm], labels == labels[perm], cfg.margin)
    total = parts["print"] + parts.get("vein", 0.0) + cfg.cross_weight * parts.get("cross", 0.0)
    if cfg.bit_margin_weight > 0:
        outs = [u_print] if u_vein is None else [u_print, u_vein]
        parts["bit_margin"] = sum(bit_margin_loss(u, cfg.bit_margin) for u in outs)
        total = total + cfg.bit_margin_weight * parts["bit_margin"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
