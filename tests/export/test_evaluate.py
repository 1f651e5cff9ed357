import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.centroids import make_centroids
from export.evaluate import evaluate_outputs, output_margin, write_det

from .conftest import untrained_checkpoint

MODES = {"print", "vein", "multi", "cross_p2v", "cross_v2p", "centroid_print", "centroid_vein"}


def _outputs(noise: float, seed: int = 0):
    """8 identities x 3 samples: each output is its centroid (scaled) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 3)
    cent = make_centroids(8, 32)
    u = {m: 2.0 * cent[labels] + noise * rng.standard_normal((24, 32)) for m in ("print", "vein")}
    return u, labels, cent


def test_perfect_codes_score_perfectly_and_pairs_are_all_counted():
    u, labels, cent = _outputs(noise=0.1)
    report, _ = evaluate_outputs(u, labels, cent)
    assert set(report["hamming"]) == set(report["cosine"]) == MODES
    for space in ("hamming", "cosine"):
        for r in report[space].values():
            assert r["eer"] == 0.0 and r["rank1"] == 1.0
    h = report["hamming"]
    assert (h["print"]["n_genuine"], h["print"]["n_impostor"]) == (8 * 3, 24 * 23 // 2 - 24)
    assert (h["cross_p2v"]["n_genuine"], h["cross_p2v"]["n_impostor"]) == (8 * 9, 24 * 24 - 72)
    assert (h["centroid_vein"]["n_genuine"], h["centroid_vein"]["n_impostor"]) == (24, 24 * 7)
    assert report["mean_eer"] == 0.0


def test_random_codes_score_near_chance():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(30), 4)
    u = {m: rng.standard_normal((120, 32)) for m in ("print", "vein")}
    report, _ = evaluate_outputs(u, labels, make_centroids(30, 32))
    for space in ("hamming", "cosine"):
        for mode, r in report[space].items():
            assert 0.35 < r["eer"] < 0.65, (space, mode)
            assert r["rank1"] < 0.3


def test_noisy_codes_order_the_modes_sensibly():
    u, labels, cent = _outputs(noise=2.0, seed=2)
    h = evaluate_outputs(u, labels, cent)[0]["hamming"]
    assert 0 < h["multi"]["eer"] <= min(h["print"]["eer"], h["vein"]["eer"])


def test_print_only_has_print_modes_only():
    u, labels, cent = _outputs(noise=0.5)
    report, _ = evaluate_outputs({"print": u["print"]}, labels, cent)
    assert set(report["hamming"]) == {"print", "centroid_print"}


def test_output_margin_counts_outputs_near_zero():
    u = {"print": np.array([[127.0, 0.1, -0.4, 3.0]])}
    m = output_margin(u)["print"]
    assert m["frac_within_int8_step"] == pytest.approx(0.5)  # 0.1 and -0.4 are within 127/254


def test_det_pngs(tmp_path):
    u, labels, cent = _outputs(noise=1.5)
    _, curves = evaluate_outputs(u, labels, cent)
    paths = write_det(curves, tmp_path)
    assert {p.name for p in paths} == {f"det_{m}.png" for m in MODES}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.slow
def test_eval_command_on_a_trained_checkpoint(tmp_path):
    from export.synth import write_dataset

    root = write_dataset("casiam", tmp_path / "data", 4, 4, "easy", 0)
    run = tmp_path / "run"
    train = [
        sys.executable,
        "-m",
        "export.cli",
        "train",
        "--ds",
        "casiam",
        "--data-root",
        str(root),
        "--model",
        "tiny",
        "--epoch",
        "1",
        "-b",
        "8",
        "--out",
        str(run),
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    subprocess.run(train, check=True, capture_output=True, timeout=120)
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "export.cli", "eval", str(run / "best.pt"), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cross_v2p" in res.stdout and "mean_eer=" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["hamming"]) == MODES and report["n_test"] == 8
    assert (out / "det_multi.png").is_file()


def test_eval_refuses_an_output_folder_it_cannot_write_before_evaluating(tmp_path):
    """`eval --out` into a folder this user cannot write evaluated the whole split (minutes on a
    real one) and only then ended in a PermissionError traceback."""
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cmd = [sys.executable, "-m", "export.cli", "eval", str(ckpt), "--out", str(ro / "ev")]
    if os.geteuid() == 0:  # root writes into any folder: run it without that power
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE with")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    # one line, and no evaluation before it (its progress bar, its report)
    assert res.stderr.splitlines() == [
        f"error: output folder {ro / 'ev'}: cannot write the report there (Permission denied); "
        "name a folder this user can write (it is made if missing)"
    ]
    assert res.stdout == "" and not (ro / "ev").exists()
