"""palm-export export/verify/inspect on a briefly trained tiny PalmCohashNet (synthetic palms).

One module-scoped training and one full export (2 modalities x ONNX/TFLite x fp32/int8) are shared
by the tests; each test then checks one promise the bundle makes to a device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import synth_split

pytestmark = pytest.mark.slow

IDS, SAMPLES, BITS, STEPS = 12, 6, 32, 60


def _train_checkpoint(path: Path) -> Path:
    import torch

    from agent.preprocess import preprocess
    from export.centroids import make_centroids
    from export.checkpoint import save_checkpoint
    from export.losses import cohash_loss
    from export.model import create_model

    arrays, train, _, meta = synth_split(IDS, SAMPLES)
    torch.manual_seed(0)
    model = create_model("tiny", BITS)
    centroids = make_centroids(IDS, BITS, 0)
    xp = torch.from_numpy(np.stack([preprocess(x) for x in arrays.print[train]]))
    xv = torch.from_numpy(np.stack([preprocess(x) for x in arrays.vein[train]]))
    y = torch.from_numpy(arrays.labels[train])
    c = torch.as_tensor(centroids, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(STEPS):
        loss, _ = cohash_loss(*model(xp, xv), y, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta["train"] = {"command": "tests/export/test_export.py", "steps": STEPS}
    return save_checkpoint(path, model.eval(), centroids, meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from export.cli import main

    tmp = tmp_path_factory.mktemp("export")
    ckpt = _train_checkpoint(tmp / "tiny.pt")
    assert main(["keygen", "--out", str(tmp / "key")]) == 0
    out = tmp / "bundle"
    rc = main(
        [
            "export",
            str(ckpt),
            "--calib",
            "36",
            "--out",
            str(out),
            "--tar",
            "--sign-key",
            str(tmp / "key.pem"),
            # 36 test images cannot resolve an EER to 0.5 pp (a few flipped bits move it by
            # several pp), and a 60-step tiny net sits at ~99% int8 agreement run to run; this
            # run gates on agreement >= 98% only (the gate itself is tested below)
            "--max-eer-increase",
            "100",
            "--min-agreement",
            "0.98",
        ]
    )
    return {"rc": rc, "ckpt": ckpt, "out": out, "tmp": tmp, "pub": tmp / "key.pub"}


def test_every_format_and_precision_is_exported_and_passes_the_gate(exported):
    from agent.bundle import load_bundle

    assert exported["rc"] == 0
    b = load_bundle(
        exported["out"].with_suffix(".tar"),
        public_key=exported["pub"],
        extract_to=exported["tmp"] / "unpacked",
    )
    assert b.signed
    got = {(m.modality, m.format, m.precision) for m in b.models()}
    assert got == {
        (m, f, p) for m in ("print", "vein") for f in ("onnx", "tflite") for p in ("fp32", "int8")
    }
    assert b.parity["gate"]["passed"]
    for row in b.parity["files"]:
        assert row["bit_agreement"] >= 0.98, row
    for mode in ("print", "vein", "multi", "cross_p2v", "centroid_print"):
        t = b.thresholds[mode]
        assert t["0.0001"] <= t["0.001"] <= t["0.01"] <= BITS * (2 if mode == "multi" else 1)
    # int8 TFLite takes and gives int8 tensors; the manifest records their quantization
    q = b.model("print", "tflite", "int8")
    assert q.input_dtype == "int8" and q.output_dtype == "int8"
    assert q.input_quant.scale > 0 and q.output_quant.scale > 0


def test_files_load_in_both_runtimes_and_device_codes_equal_the_parity_report(exported):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from agent.bundle import load_bundle
    from agent.inference import open_backend
    from export.checkpoint import load_checkpoint
    from export.data.split import load_split
    from export.parity import codes_digest

    b = load_bundle(exported["out"], public_key=exported["pub"])
    _, ckpt = load_checkpoint(exported["ckpt"])
    test = load_split(ckpt, "test")
    recorded = {r["file"]: r["codes_sha256"] for r in b.parity["files"]}
    for m in b.models():
        path = b.root / m.file
        if m.format == "onnx":
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            Interpreter(model_path=str(path)).allocate_tensors()
        rois = test.print if m.modality == "print" else test.vein
        with open_backend(path, spec=b.preprocess(m.modality)) as backend:
            assert codes_digest(backend.hash(rois)) == recorded[m.file], m.file


def test_verify_reruns_parity_and_inspect_prints_the_manifest(exported, capsys):
    from export.cli import main

    out, ckpt = str(exported["out"]), str(exported["ckpt"])
    assert main(["verify", out, "--public-key", str(exported["pub"]), "--checkpoint", ckpt]) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "signature: verified" in text
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "vein.int8.tflite" in text and "centroid_vein" in text and "lsb0-words" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("thresholds")) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
    table = lines[start:end]
    assert len(table) >= 8 and any("centroid_print" in line for line in table)
    assert len({len(line) for line in table}) == 1, table  # columns line up, long names too


def test_tampered_model_or_manifest_is_refused(exported):
    from agent.bundle import load_bundle
    from agent.manifest import BundleError

    bad = exported["tmp"] / "tampered"
    shutil.copytree(exported["out"], bad)
    model = bad / "print.int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x40
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"print\.int8\.tflite: sha256"):
        load_bundle(bad)
    shutil.rmtree(bad)
    shutil.copytree(exported["out"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["thresholds"]["print"]["0.001"] = 16.0  # hashes still match: only the key can tell
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bad, public_key=exported["pub"])


def test_gate_fails_when_agreement_is_forced_low(exported, capsys):
    from agent.bundle import load_bundle
    from agent.manifest import BundleError
    from export.cli import main

    out = exported["tmp"] / "strict"
    args = [
        "export",
        str(exported["ckpt"]),
        "--formats",
        "onnx",
        "--precision",
        "int8",
        "--calib",
        "8",
        "--out",
        str(out),
        "--min-agreement",
        "1.001",
    ]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "FAILED the parity gate" in err
    with pytest.raises(BundleError, match="failed the export parity gate"):
        load_bundle(out)
    # shipping it knowingly is possible, and recorded
    assert main([*args, "--allow-degraded"]) == 0
    b = load_bundle(out)
    assert not b.parity["gate"]["passed"] and b.parity["gate"]["allow_degraded"]
    assert any("bit agreement" in f for f in b.parity["gate"]["failures"])


def test_an_export_into_an_earlier_bundle_replaces_it(exported, tmp_path):
    """The int8 quantizer starts from the fp32 ONNX file in the folder: one an earlier export
    left there was reused, and its other forms went into the tar."""
    from agent.bundle import load_bundle
    from export.cli import main

    out = tmp_path / "bundle"
    shutil.copytree(exported["out"], out)  # an earlier export: every form, signed
    (out / "print.fp32.onnx").write_bytes(b"an earlier model")
    args = ["export", str(exported["ckpt"]), "--calib", "36", "--out", str(out),
            "--formats", "onnx", "--precision", "int8", "--max-eer-increase", "100",
            "--min-agreement", "0.98", "--tar"]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "bundle.tar").is_file()
    # a dot in the folder's name stays in the archive's: run.1 and run.2 are two archives
    for run in ("run.1", "run.2"):
        assert main([*args[:5], str(tmp_path / run), *args[6:]]) == 0
    assert {p.name for p in tmp_path.glob("*.tar")} == {"bundle.tar", "run.1.tar", "run.2.tar"}
    # an export over run.2 without --tar removes run.2.tar: it held the bundle replaced
    assert main([*args[:5], str(tmp_path / "run.2"), *args[6:-1]]) == 0
    assert {p.name for p in tmp_path.glob("*.tar*")} == {"bundle.tar", "run.1.tar"}
    assert sorted(p.name for p in out.iterdir()) == [
        "centroids.npz",
        "manifest.json",
        "print.int8.onnx",
        "vein.int8.onnx",
    ]
    assert {m.file for m in load_bundle(out).manifest.models} == {
        "print.int8.onnx",
        "vein.int8.onnx",
    }


def test_the_manifest_records_the_calibration_images_used_not_asked_for(exported, tmp_path):
    """--calib beyond the training split takes all of it; the manifest said the number asked
    for (200 by default), as if the int8 ranges had seen more images than they did."""
    from agent.bundle import load_bundle
    from export.cli import main

    out = tmp_path / "bundle"
    args = ["export", str(exported["ckpt"]), "--calib", "1000", "--out", str(out),
            "--formats", "onnx", "--precision", "int8", "--allow-degraded"]  # fmt: skip
    assert main(args) == 0
    m = load_bundle(out, allow_degraded=True).manifest
    used = m.training["split_sizes"]["train"]
    assert used < 1000
    assert m.training["calibration_images"] == used
    assert {e.quantization["calibration_images"] for e in m.models} == {used}
