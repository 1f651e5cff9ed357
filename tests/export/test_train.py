import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.preprocess import DEFAULT_SPEC
from export.centroids import make_centroids
from export.checkpoint import load_checkpoint
from export.data import from_synth, load_split, reference_split
from export.evaluate import evaluate_model
from export.model import PalmCohashNet
from export.synth import generate_arrays, write_dataset
from export.train import fit, parse_args

REPO = Path(__file__).resolve().parents[2]
TYPED = shlex.split("-b 256 --ds casiam --bits 32 --model res18 --comment caRes32 --epoch 4000")
FAST = ["--model", "tiny", "--optimizer", "adam", "--threads", "1", "--device", "cpu"]


def _synth(ids, samples, level="easy", seed=0):
    arrays = from_synth(*generate_arrays(ids, samples, level, seed))
    meta = {
        "ds": "synth",
        "root": None,
        "ids": ids,
        "samples": samples,
        "synth": {"ids": ids, "samples": samples, "level": level, "seed": seed},
    }
    return arrays, meta


def test_reference_command_parses_as_typed():
    a = parse_args(TYPED)
    assert (a.batch_size, a.ds, a.bits, a.model, a.comment, a.epochs) == (
        256,
        "casiam",
        32,
        "res18",
        "caRes32",
        4000,
    )
    assert (a.optimizer, a.lr, a.weight_decay) == ("rmsprop", 1e-5, 1e-5)


def test_reference_command_without_data_says_what_to_do(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PALM_DATA", None)
    res = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *TYPED],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Casia_M/" in err and "palm-export synth" in err


@pytest.mark.slow
def test_tiny_model_learns_every_mode(tmp_path):
    arrays, meta = _synth(20, 8)
    args = parse_args(
        [
            *FAST,
            "-b",
            "32",
            # 30 left the cross-modal EER at 0.58 of the untrained one on an AMD EPYC (0.5
            # asked; float sums differ between CPUs); 45 gives 0.13 there
            "--epoch",
            "45",
            "--lr",
            "3e-3",
            "--eval-every",
            "100",
            "--out",
            str(tmp_path),
        ]
    )
    torch.manual_seed(args.seed)
    untrained = evaluate_model(
        PalmCohashNet("tiny", 32),
        arrays.subset(reference_split(arrays)[1]),
        make_centroids(20, 32),
        DEFAULT_SPEC,
    )
    report = fit(args, arrays, meta)
    for space in ("hamming", "cosine"):
        for mode, r in report[space].items():
            before = untrained[space][mode]["eer"]
            assert r["eer"] < 0.5 * before, (space, mode, r["eer"], before)
    assert report["mean_eer"] < 0.15
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["arch"] == {"backbone": "tiny", "bits": 32, "in_channels": {"print": 3, "vein": 3}}
    assert ckpt["centroids"].dtype == np.int8 and ckpt["centroids"].shape == (20, 32)
    assert ckpt["labels"] == arrays.identities and ckpt["eval"]["mean_eer"] == report["mean_eer"]
    test = load_split(ckpt, "test")
    assert (
        len(test) == 80
        and evaluate_model(model, test, ckpt["centroids"], DEFAULT_SPEC)["mean_eer"]
        == report["mean_eer"]
    )
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def _weights(path):
    return load_checkpoint(path)[1]["state_dict"]


def test_deterministic_and_resume_continues_exactly(tmp_path):
    arrays, meta = _synth(6, 4)
    common = [*FAST, "-b", "8", "--lr", "1e-3", "--eval-every", "100"]
    for name in ("a", "b"):
        fit(parse_args([*common, "--epoch", "2", "--out", str(tmp_path / name)]), arrays, meta)
    fit(parse_args([*common, "--epoch", "1", "--out", str(tmp_path / "c")]), arrays, meta)
    fit(
        parse_args([*common, "--epoch", "2", "--out", str(tmp_path / "c"), "--resume"]),
        arrays,
        meta,
    )
    a, b, c = (_weights(tmp_path / n / "last.pt") for n in "abc")
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
    assert load_checkpoint(tmp_path / "c" / "last.pt")[1]["train"]["epoch"] == 2


def test_an_interrupt_during_an_evaluation_resumes_exactly(tmp_path, monkeypatch):
    """The epoch's steps were all applied: it is recorded done, and not trained again."""
    import export.evaluate

    arrays, meta = _synth(6, 4)
    common = [*FAST, "-b", "8", "--lr", "1e-3", "--eval-every", "1"]
    fit(parse_args([*common, "--epoch", "2", "--out", str(tmp_path / "a")]), arrays, meta)
    evaluate, calls = export.evaluate.evaluate_model, []

    def interrupted_at_the_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(export.evaluate, "evaluate_model", interrupted_at_the_first)
    with pytest.raises(KeyboardInterrupt):
        fit(parse_args([*common, "--epoch", "2", "--out", str(tmp_path / "b")]), arrays, meta)
    assert load_checkpoint(tmp_path / "b" / "last.pt")[1]["train"]["epoch"] == 1
    fit(parse_args([*common, "--epoch", "2", "--out", str(tmp_path / "b"), "--resume"]),
        arrays, meta)  # fmt: skip
    a, b = (_weights(tmp_path / n / "last.pt") for n in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_progress_bar_shows_each_finished_step_with_its_loss(tmp_path, capsys):
    """tqdm's own iteration counted a step when the next batch was asked for: the bar showed
    "0/3" beside the first step's loss, and never "3/3"."""
    import json
    import re

    arrays, meta = _synth(6, 4)  # 12 training pairs: 3 steps of 4 an epoch
    args = [*FAST, "-b", "4", "--epoch", "2", "--eval-every", "1", "--out", str(tmp_path)]
    fit(parse_args(args), arrays, meta)
    frames = capsys.readouterr().err.split("\r")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for epoch, row in enumerate(rows, 1):
        shown = [
            (int(m[1]), m[2])
            for f in frames
            if (m := re.search(rf"^epoch {epoch}/2:.* (\d)/3 .*loss=([\d.]+)", f))
        ]
        assert shown and all(n >= 1 for n, _ in shown), shown
        # one count per mean loss: a loss never sits beside two counts
        assert len({loss: n for n, loss in shown}) == len(set(shown)), shown
        assert shown[-1] == (3, f"{row['loss']:.4f}"), (shown, row["loss"])


def test_an_interrupt_within_an_epoch_resumes_at_the_next_step(tmp_path):
    """Ctrl-C during an epoch's steps resumed at the epoch's start, its finished steps already
    in the saved weights: they were trained twice. Now the step under way finishes (the signal
    comes here just after the optimiser's update, where it used to cut the step off from its
    count), last.pt says how far into the epoch it got, and the resumed run trains the rest."""
    import json

    from torch.optim.optimizer import register_optimizer_step_post_hook

    arrays, meta = _synth(6, 4)  # 12 training pairs: 3 steps of 4 an epoch
    common = [*FAST, "-b", "4", "--lr", "1e-3", "--eval-every", "1", "--epoch", "2"]
    fit(parse_args([*common, "--out", str(tmp_path / "a")]), arrays, meta)
    steps = []

    def interrupt_at_the_fifth(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == 5:  # the second step of the second epoch
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(interrupt_at_the_fifth)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(parse_args([*common, "--out", str(tmp_path / "b")]), arrays, meta)
        train = load_checkpoint(tmp_path / "b" / "last.pt")[1]["train"]
        assert (train["epoch"], train["in_epoch"]["steps"], train["in_epoch"]["samples"]) == (
            1,
            2,
            8,
        )
        fit(parse_args([*common, "--out", str(tmp_path / "b"), "--resume"]), arrays, meta)
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, previous)
    assert len(steps) == 6  # 5 before the interrupt, 1 after it: 2 epochs of 3
    a, b = (_weights(tmp_path / n / "last.pt") for n in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = {
        n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in "ab"
    }
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows["a"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows["b"]
    ]
    assert "in_epoch" not in load_checkpoint(tmp_path / "b" / "last.pt")[1]["train"]


def test_a_resume_with_another_process_count_runs_the_interrupted_epoch_again(tmp_path, caplog):
    """The samples an interrupted epoch trained on are those of its processes' shares: with
    another count the resumed run cannot tell which, so it says so and runs the epoch again."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    arrays, meta = _synth(6, 4)  # 3 steps of 4 an epoch
    args = [*FAST, "-b", "4", "--eval-every", "1", "--epoch", "1", "--out", str(tmp_path)]
    steps = []

    def interrupt_at_the_second(optimizer, hook_args, kwargs):
        steps.append(1)
        if len(steps) == 2:
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(interrupt_at_the_second)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(parse_args(args), arrays, meta)
        ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
        assert ckpt["train"]["in_epoch"]["world"] == 1
        ckpt["train"]["in_epoch"]["world"] = 2  # as if interrupted under torchrun with 2
        torch.save(ckpt, tmp_path / "last.pt")
        with caplog.at_level("WARNING", logger="export.train"):
            fit(parse_args([*args, "--resume"]), arrays, meta)
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, previous)
    assert len(steps) == 2 + 3  # the whole epoch again, not its last step only
    assert any("the interrupted run had 2" in r.getMessage() for r in caplog.records)


def test_print_only_data_trains_the_print_path(tmp_path):
    p, _ = generate_arrays(4, 4, "easy", 0)
    arrays = from_synth(p, None)
    meta = {
        "ds": "synth",
        "root": None,
        "synth": {"ids": 4, "samples": 4, "level": "easy", "seed": 0},
    }
    report = fit(
        parse_args([*FAST, "-b", "8", "--epoch", "1", "--out", str(tmp_path)]), arrays, meta
    )
    assert set(report["hamming"]) == {"print", "centroid_print"}
    state = load_checkpoint(tmp_path / "last.pt")[1]["state_dict"]
    torch.manual_seed(0)  # the init fit made, with --seed 0
    fresh = PalmCohashNet("tiny", 32).state_dict()
    assert not torch.equal(state["print_net.fc.weight"], fresh["print_net.fc.weight"])
    assert torch.equal(state["vein_net.fc.weight"], fresh["vein_net.fc.weight"])


def test_last_checkpoint_written_at_most_every_save_every_seconds(tmp_path, monkeypatch):
    import export.checkpoint

    arrays, meta = _synth(4, 4)
    saved: list[tuple[str, int]] = []
    real = export.checkpoint.save_checkpoint

    def counting(path, model, centroids, ckpt_meta):
        saved.append((Path(path).name, ckpt_meta["train"]["epoch"]))
        return real(path, model, centroids, ckpt_meta)

    monkeypatch.setattr(export.checkpoint, "save_checkpoint", counting)
    common = [*FAST, "-b", "8", "--epoch", "3", "--eval-every", "100"]
    for every, expected in (("3600", [3]), ("0", [1, 2, 3])):
        saved.clear()
        out = tmp_path / every
        fit(parse_args([*common, "--save-every", every, "--out", str(out)]), arrays, meta)
        assert [e for name, e in saved if name == "last.pt"] == expected, every
        assert load_checkpoint(out / "last.pt")[1]["train"]["epoch"] == 3


def test_det_plots_drawn_once_at_the_end_report_every_evaluation(tmp_path, monkeypatch):
    import export.evaluate

    arrays, meta = _synth(4, 4)
    drawn: list[int] = []
    real = export.evaluate.write_det

    def counting(curves, out_dir):
        drawn.append(len((tmp_path / "metrics.jsonl").read_text().splitlines()))
        return real(curves, out_dir)

    monkeypatch.setattr(export.evaluate, "write_det", counting)
    args = [*FAST, "-b", "8", "--epoch", "3", "--eval-every", "1", "--out", str(tmp_path)]
    fit(parse_args(args), arrays, meta)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert drawn == [2]  # during the third evaluation, after two lines of metrics
    assert sorted(p.name for p in (tmp_path / "eval").glob("det_*.png"))
    assert (tmp_path / "eval" / "report.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_interrupt_saves_and_resume_finishes(tmp_path, sig):
    root = write_dataset("casiam", tmp_path / "data", 4, 4, "easy", 0)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "main.py"),
        "--ds",
        "casiam",
        "--data-root",
        str(root),
        *FAST,
        "-b",
        "8",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # an evaluation every epoch shows that training runs; no periodic last.pt in this run, so
    # the one found afterwards is the interrupt's
    first = [*cmd, "--epoch", "100000", "--eval-every", "1", "--save-every", "3600"]
    # Ctrl-C reaches training as at a terminal, also where the tests run as a background job
    # (which inherits SIGINT ignored, and then Python installs no KeyboardInterrupt for it)
    proc = subprocess.Popen(
        first,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 90
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (out / "last.pt").exists()
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "continue with --resume" in err
    done = load_checkpoint(out / "last.pt")[1]["train"]["epoch"]
    assert done >= 1
    res = subprocess.run(
        [*cmd, "--epoch", str(done + 1), "--eval-every", "1000", "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"resumed checkpoint={out / 'last.pt'} epoch={done}" in res.stderr
    assert load_checkpoint(out / "last.pt")[1]["train"]["epoch"] == done + 1
