"""``weights_sha256``: the manifest names the network its codes come from, one value per
checkpoint whatever the format, precision or pickling, another for other weights."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import untrained_checkpoint

IDS, SAMPLES, BITS = 4, 4, 32


def _export(ckpt: Path, out: Path, precision: str) -> str:
    from export.cli import main

    args = ["export", str(ckpt), "--formats", "onnx", "--precision", precision,
            "--calib", "8", "--out", str(out), "--allow-degraded"]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "manifest.json").read_text())["weights_sha256"]


def test_exports_of_one_checkpoint_share_the_weights_digest_and_another_differs(tmp_path):
    import torch

    from agent.bundle import load_bundle

    ckpt = untrained_checkpoint(tmp_path / "a.pt", IDS, BITS, SAMPLES, seed=0)
    fp32 = _export(ckpt, tmp_path / "fp32", "fp32")
    assert len(fp32) == 64 and int(fp32, 16) >= 0
    assert load_bundle(tmp_path / "fp32", allow_degraded=True).manifest.weights_sha256 == fp32
    # the same weights saved again, pickled otherwise and the tensors in another order
    d = torch.load(ckpt, weights_only=False)
    d["state_dict"] = dict(reversed(list(d["state_dict"].items())))
    resaved = tmp_path / "resaved.pt"
    torch.save(d, resaved, pickle_protocol=2, _use_new_zipfile_serialization=False)
    assert resaved.read_bytes() != ckpt.read_bytes()
    assert _export(resaved, tmp_path / "int8", "int8") == fp32  # int8 of it: the same codes
    other = untrained_checkpoint(tmp_path / "b.pt", IDS, BITS, SAMPLES, seed=1)
    assert _export(other, tmp_path / "other", "fp32") != fp32


def test_the_digest_covers_name_dtype_shape_and_bytes():
    """Each part of a tensor changes it: two state dicts alike but for a name, a dtype, a
    shape or a value are different networks."""
    import torch

    from export.weights import weights_sha256

    base = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    variants = [
        {"b.weight": base["a.weight"]},
        {"a.weight": base["a.weight"].to(torch.float64)},
        {"a.weight": base["a.weight"].reshape(3, 2)},
        {"a.weight": base["a.weight"] + 1},
    ]
    digests = {weights_sha256(v) for v in [base, *variants]}
    assert len(digests) == 5
    # a transposed (non-contiguous) view hashes as its contiguous copy
    t = torch.arange(6, dtype=torch.float32).reshape(3, 2).t()
    assert weights_sha256({"a.weight": t}) == weights_sha256({"a.weight": t.contiguous()})
