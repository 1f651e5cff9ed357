import math

import pytest
import torch
import torch.nn.functional as F

from export.losses import (
    LossConfig,
    bit_margin_loss,
    cohash_loss,
    contrastive_loss,
    csq_loss,
)


def test_csq_matches_the_written_formula():
    u = torch.tensor([[0.3, -1.2, 2.0, 0.0], [-0.7, 0.1, -3.0, 1.5]])
    c = torch.tensor([[1, -1, -1, 1], [1, 1, -1, -1]], dtype=torch.float32)
    p = (torch.tanh(u) + 1) / 2
    bce = F.binary_cross_entropy(p, (c + 1) / 2)
    quant = ((torch.tanh(u).abs() - 1) ** 2).mean()
    assert csq_loss(u, c, 0.1).item() == pytest.approx((bce + 0.1 * quant).item(), rel=1e-5)
    assert csq_loss(u, c, 0.0).item() == pytest.approx(bce.item(), rel=1e-5)


def test_csq_quantization_term_alone():
    u = torch.zeros(1, 4)  # p = 0.5 everywhere: BCE = ln 2, (|tanh 0| - 1)^2 = 1
    c = torch.ones(1, 4)
    assert csq_loss(u, c, 0.25).item() == pytest.approx(math.log(2) + 0.25)


def test_csq_is_finite_and_small_far_on_the_right_side():
    c = torch.tensor([[1.0, -1.0]])
    assert csq_loss(torch.tensor([[40.0, -40.0]]), c).item() < 1e-6
    assert math.isfinite(csq_loss(torch.tensor([[-40.0, 40.0]]), c).item())


def test_contrastive_terms():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.5], [0.0, 0.0]])
    same = torch.tensor([True, False, False, True])
    # same: d^2 = 9 and 0; different: (2-1)^2 = 1 and max(0, 2-2.5)^2 = 0
    got = contrastive_loss(a, b, same, margin=2.0).item()
    assert got == pytest.approx((9 + 0 + 1 + 0) / 4, rel=1e-4)


def test_cohash_total_is_print_plus_vein_plus_weighted_cross():
    torch.manual_seed(0)
    up, uv = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    cent = torch.tensor([[1] * 8, [-1] * 8, [1, -1] * 4], dtype=torch.float32)
    cfg = LossConfig(quant_weight=0.1, cross_weight=0.5, margin=2.0)
    total, parts = cohash_loss(up, uv, labels, cent, cfg, torch.Generator().manual_seed(1))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    cross = contrastive_loss(up, uv[perm], labels == labels[perm], 2.0)
    assert parts["print"] == pytest.approx(csq_loss(up, cent[labels]).item(), rel=1e-6)
    assert parts["vein"] == pytest.approx(csq_loss(uv, cent[labels]).item(), rel=1e-6)
    assert parts["cross"] == pytest.approx(cross.item(), rel=1e-6)
    expect = parts["print"] + parts["vein"] + 0.5 * parts["cross"]
    assert total.item() == pytest.approx(expect, rel=1e-5)


def test_print_only_batch_has_no_vein_or_cross_term():
    up = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 0, 1])
    cent = torch.tensor([[1] * 8, [-1] * 8], dtype=torch.float32)
    total, parts = cohash_loss(up, None, labels, cent)
    assert set(parts) == {"print"} and total.item() == pytest.approx(parts["print"])


def test_bit_margin_hinge():
    u = torch.tensor([[0.25, -0.5, 2.0, -1.0]])
    assert bit_margin_loss(u, 1.0).item() == pytest.approx((0.75 + 0.5 + 0 + 0) / 4)
    labels = torch.tensor([0])
    cent = torch.ones(1, 4)
    base, _ = cohash_loss(u, None, labels, cent, LossConfig())
    with_margin, parts = cohash_loss(u, None, labels, cent, LossConfig(bit_margin_weight=2.0))
    assert with_margin.item() == pytest.approx(base.item() + 2.0 * parts["bit_margin"], rel=1e-6)
