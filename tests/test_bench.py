"""The benchmarks answer --help, and keep stdout to JSON so that their output can be piped to a
file or ``jq`` and read back: progress, logs and the converters' notes go to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.conftest import make_bundle

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "procfs.py")


def bench(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(out: subprocess.CompletedProcess) -> list[dict]:
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    not_json = []
    for ln in lines:
        try:
            json.loads(ln)
        except ValueError:
            not_json.append(ln)
    assert not_json == [], f"stdout lines that are not JSON: {not_json[:5]}"
    assert lines, "no JSON on stdout"
    return [json.loads(ln) for ln in lines]


@pytest.mark.parametrize("name", BENCHES)
def test_help_answers_without_running_the_bench(name):
    out = bench(name, "--help", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("usage:"), out.stdout[:300]


def test_e2e_stdout_is_json_lines(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    args = ["--bundle", str(bundle), "--out", str(tmp_path / "out"), "--seconds", "1"]
    args += ["--warmup", "0.2", "--runs", "2", "--cooldown", "0", "--page-cache", "as-is"]
    rows = json_lines(bench("e2e.py", *args))
    assert [r["bench"] for r in rows] == ["e2e", "e2e_summary"]
    row, summary = rows
    assert row["decisions"] > 0
    # the forms within the overhead goal, named: here the one form run, if both ratios meet it
    within = all(row[k] <= 0.3 for k in ("overhead_ratio", "overhead_ratio_in_daemon"))
    form = f"{row['runtime']}:{row['precision']}"
    assert summary["overhead_ok_forms"] == {"0.0": [form] if within else []}


@pytest.mark.slow
def test_e2e_stdout_is_json_lines_while_it_builds_its_bundle(tmp_path):
    args = ["--out", str(tmp_path / "out"), "--only", "tflite:int8", "--seconds", "1"]
    args += ["--warmup", "0.2", "--runs", "2", "--cooldown", "0", "--page-cache", "as-is"]
    rows = json_lines(bench("e2e.py", *args))
    assert [r["bench"] for r in rows] == ["e2e", "e2e_summary"]


@pytest.mark.slow
def test_vision_stdout_is_json_lines():
    rows = json_lines(bench("vision.py", "--frames", "1", "--repeats", "1"))
    assert rows[-1]["summary"] is True


@pytest.mark.slow
def test_infer_stdout_is_json_lines():
    args = ["--backbones", "light", "--modalities", "print", "--runs", "1"]
    rows = json_lines(bench("infer.py", *args))
    assert {r["format"] for r in rows if "format" in r} == {"onnx", "tflite"}


@pytest.mark.slow
def test_train_resume_finds_a_resumed_cpu_run_equal_to_an_uninterrupted_one(tmp_path):
    from export.synth import write_dataset

    data = tmp_path / "data"
    write_dataset("casiam", data, ids=12, samples=6, level="easy", seed=0)
    args = ["--data-root", str(data), "--model", "tiny", "--epoch", "30", "-b", "8"]
    args += ["--workers", "0", "--device", "cpu", "--interrupt-at", "6", "--out", str(tmp_path)]
    args += ["--", "--optimizer", "adam", "--lr", "1e-3", "--threads", "1", "--eval-every", "10"]
    *runs, compared = json_lines(bench("train_resume.py", *args))
    assert [r["run"] for r in runs] == ["a", "b", "c"]
    assert all(r["epochs"] == 30 for r in runs)
    (stop,) = runs[2]["interrupts"]
    assert stop["exit"] == 130 and 0 < stop["resumed_epochs_done"] < 30, stop
    assert compared["resumed_vs_uninterrupted"]["equal"], compared
    assert compared["uninterrupted_vs_uninterrupted"]["equal"], compared
