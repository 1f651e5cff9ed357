import os
import subprocess
import sys
from pathlib import Path

from export.checkpoint import load_checkpoint
from export.synth import write_dataset

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_cpu_processes_with_gloo(tmp_path):
    root = write_dataset("casiam", tmp_path / "data", 4, 4, "easy", 0)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "main.py"),
        "--ds",
        "casiam",
        "--data-root",
        str(root),
        "--model",
        "tiny",
        "-b",
        "8",
        "--epoch",
        "2",
        "--eval-every",
        "100",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):  # both processes trained, each on half of every batch of 8
        assert f"train start rank={rank} world=2 device=cpu train=8 test=8 batch_per_rank=4" in (
            res.stderr
        )
    assert res.stdout.count("mean_eer=") == 1  # only rank 0 evaluates and writes
    _, ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["train"]["epoch"] == 2 and ckpt["eval"]["n_test"] == 8
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
