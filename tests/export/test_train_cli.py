"""The training and evaluation command lines: a value that cannot work, a wrong data set or a
missing checkpoint ends in one line that says what to do, before training and without a
traceback; --help says where each --ds keeps its files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.train import main as train_main
from export.train import parse_args
from export.train_args import MODELS
from tests.export.test_layouts_untidy import _casiam

REPO = Path(__file__).resolve().parents[2]
FAST = ["--model", "tiny", "--optimizer", "adam", "--threads", "1", "--device", "cpu"]


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys; from export.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["-b", "0"],
        ["--eval-every", "0"],  # was a ZeroDivisionError after the first epoch's training
        ["--epoch", "0"],
        ["--workers", "-1"],
        ["--model", "res19"],  # was a traceback after the data set was read
        ["--save-every", "-5"],
    ],
)
def test_values_that_cannot_work_are_refused_when_parsed(flags, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(flags)
    assert e.value.code == 2
    assert f"argument {flags[0]}" in capsys.readouterr().err


def test_model_choices_are_the_backbones():
    from export.backbones import BACKBONES

    assert sorted(MODELS) == sorted(BACKBONES)


def test_help_says_where_each_data_set_keeps_its_files(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for where in ("Casia_M/{casia_700", "MS_PolyU/", "Tongji_jpg/", "IITD/", "print/<identity>"):
        assert where in out
    assert "palm-export synth" in out and "epochs in all" in out


def test_resume_errors_and_nothing_left_to_train(tmp_path, capsys, caplog):
    root = _casiam(tmp_path / "data", ids=2, samples=4)
    base = [*FAST, "--ds", "casiam", "--data-root", str(root), "-b", "4", "--eval-every", "5"]
    base += ["--out", str(tmp_path / "run")]
    assert train_main([*base, "--epoch", "1", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert train_main([*base, "--epoch", "1"]) == 0
    assert train_main([*base, "--epoch", "1", "--resume"]) == 0
    assert "nothing to train" in caplog.text and "pass a larger --epoch" in caplog.text
    capsys.readouterr()
    assert train_main([*base, "--epoch", "2", "--resume", "--model", "light"]) == 2
    assert "not resuming" in capsys.readouterr().err


def test_eval_with_a_wrong_root_or_no_checkpoint_says_so(tmp_path):
    root = _casiam(tmp_path / "data", ids=2, samples=4)
    args = [*FAST, "--ds", "casiam", "--data-root", str(root), "-b", "4", "--epoch", "1"]
    assert train_main([*args, "--out", str(tmp_path / "run")]) == 0
    for argv, says in (
        ([str(tmp_path / "run" / "best.pt"), "--data-root", str(tmp_path)], "use --data-root"),
        ([str(tmp_path / "nowhere.pt")], "not found"),
    ):
        res = _cli("eval", *argv, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: ") and says in res.stderr


def test_a_broken_image_stops_the_training_command_in_one_line(tmp_path):
    root = _casiam(tmp_path / "data", ids=2, samples=4)
    (root / "Casia_M" / "casia_700" / "001_03.jpg").write_bytes(b"not a jpeg")
    res = _cli("train", *FAST, "--ds", "casiam", "--data-root", str(root), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "001_03.jpg" in res.stderr.strip().splitlines()[-1]


def test_images_changed_under_the_recorded_names_are_reported(tmp_path, caplog):
    """The split names samples; a data set regenerated or replaced under the same names loaded
    silently, and the export calibrated and gated on pictures the network never saw."""
    import cv2
    import numpy as np

    from export.checkpoint import load_checkpoint
    from export.data import load_split

    root = _casiam(tmp_path / "data", ids=2, samples=4)
    args = [*FAST, "--ds", "casiam", "--data-root", str(root), "-b", "4", "--epoch", "1"]
    assert train_main([*args, "--out", str(tmp_path / "run")]) == 0
    _, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    with caplog.at_level("WARNING", logger="export.data.split"):
        load_split(ckpt, "train", root)
    assert "differ" not in caplog.text
    for f in (root / "Casia_M" / "casia_850").iterdir():
        cv2.imwrite(str(f), np.full((16, 16), 200, np.uint8))
    with caplog.at_level("WARNING", logger="export.data.split"):
        assert len(load_split(ckpt, "test", root)) == 4  # still loads: a warning, not a refusal
    assert "test images found under the checkpoint's sample names differ" in caplog.text


def test_a_checkpoint_cut_short_or_of_another_kind_is_named_in_one_line(tmp_path, capsys):
    """A .pt copied half-way, an empty file or a bare tensor ended `eval`, `export` and
    --resume in torch's traceback (zip, pickle and EOF errors) instead of naming the file."""
    import numpy as np
    import torch

    from export.checkpoint import save_checkpoint
    from export.cli import main
    from export.model import create_model

    meta = {"labels": ["1"], "preprocess": {}, "split": {}, "dataset": {}}
    good = save_checkpoint(
        tmp_path / "best.pt", create_model("tiny", 32), np.ones((1, 32), np.int8), meta
    )
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name, says in (
        ("", f"is a folder; pass one of the checkpoints in it: {good}"),  # the run's folder
        ("cut.pt", "cannot be read as a checkpoint"),
        ("empty.pt", "cannot be read as a checkpoint"),
        ("tensor.pt", "it holds a Tensor"),
    ):
        assert main(["eval", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert err[0].startswith(f"error: {tmp_path / name}") or err[0].startswith("error: check")


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """--out naming a file trained until the first evaluation, then ended in a traceback."""
    root = _casiam(tmp_path / "data", ids=2, samples=4)
    (tmp_path / "run").write_text("a file\n")
    args = [*FAST, "--ds", "casiam", "--data-root", str(root), "-b", "4", "--epoch", "1"]
    for out in ("run", "run/sub"):
        assert train_main([*args, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: output folder {tmp_path / out}: cannot write"), err
    assert "a file, not a folder" in err[-1] or "Not a directory" in err[-1]
    # tried, not made: a wrong --data-root leaves no empty run folder behind
    wrong = [*FAST, "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new" / "r")]
    assert train_main(wrong) == 2 and not (tmp_path / "new").exists()


def test_resume_with_another_optimizer_or_rate_names_the_flags(tmp_path, capsys):
    """Another --optimizer failed at the first step with a KeyError from torch; another --lr or
    --weight-decay trained on silently with the run's own, restored from the optimizer state."""
    root = _casiam(tmp_path / "data", ids=2, samples=4)
    base = [*FAST, "--ds", "casiam", "--data-root", str(root), "-b", "4", "--eval-every", "5"]
    base += ["--out", str(tmp_path / "run")]
    assert train_main([*base, "--epoch", "1"]) == 0
    capsys.readouterr()
    for flags, says in (
        (["--optimizer", "rmsprop"], "--optimizer adam (this command: rmsprop)"),
        (["--lr", "0.001"], "--lr 1e-05 (this command: 0.001)"),
        (["--bits", "64"], "--bits 32 (this command: 64)"),
    ):
        assert train_main([*base, "--epoch", "2", "--resume", *flags]) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert says in err and "not resuming: pass the run's own flags" in err, err


def test_a_device_torch_cannot_use_is_refused_before_the_data_set_is_read(tmp_path, capsys):
    """--device cuda without a CUDA GPU ended train and eval in torch's AssertionError, and
    eval's free-form --device gpu in a RuntimeError, after the data set was read."""
    import torch

    from export.cli import main

    assert main(["eval", str(tmp_path / "x.pt"), "--device", "gpu"]) == 2
    assert "error: --device gpu: not a torch device; use cpu" in capsys.readouterr().err
    if torch.cuda.is_available():
        return
    for argv in (
        ["eval", str(tmp_path / "x.pt"), "--device", "cuda"],
        ["train", "--data-root", str(tmp_path / "nowhere"), "--device", "cuda"],
    ):
        assert main(argv) == 2
        assert "error: --device cuda: no CUDA GPU" in capsys.readouterr().err, argv
    assert not (tmp_path / "nowhere").exists()
