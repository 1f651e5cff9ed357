"""The demo's reuse of its artefacts: what a second run takes as finished and what it redoes.

``palm-export`` is replaced by a stand-in that writes what each command leaves behind and
records which commands ran: the real ones train for minutes and have their own tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.demo import run


class FakeExport:
    """Writes each command's artefacts; ``stop_in`` raises KeyboardInterrupt (Ctrl-C) in it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.ran: list[str] = []
        self.stop_in: str | None = None

    def __call__(self, *args: str, log: Path | None = None) -> str:
        cmd = args[0]
        self.ran.append(cmd)
        dest = Path(args[args.index("--out") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        if cmd == "train":
            (dest / "best.pt").write_bytes(b"weights")
        elif cmd == "eval":
            (dest / "report.json").write_text("{}")
        elif cmd == "export":
            (dest / "manifest.json").write_text("{}")  # written before the parity check runs
        if cmd == self.stop_in:
            raise KeyboardInterrupt
        text = f"{cmd} table\n"
        if log is not None:
            log.write_text(text)
        return text


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeExport:
    f = FakeExport(tmp_path)
    monkeypatch.setattr(run, "palm_export", f)
    return f


def prepare(out: Path, *argv: str) -> tuple[Path, Path, str]:
    return run.prepare(run.parse_args(["--out", str(out), *argv]), out, {})


def test_a_second_run_reuses_data_checkpoint_and_bundle(tmp_path, fake):
    prepare(tmp_path)
    assert fake.ran == ["synth", "train", "eval", "export"]
    fake.ran.clear()

    _, _, parity = prepare(tmp_path)

    assert fake.ran == ["eval"]
    assert parity == "export table\n"


def test_another_precision_or_fresh_exports_again(tmp_path, fake):
    prepare(tmp_path)
    fake.ran.clear()
    prepare(tmp_path, "--precision", "fp32")
    assert fake.ran == ["eval", "export"]
    fake.ran.clear()
    prepare(tmp_path, "--precision", "fp32", "--fresh")
    assert fake.ran == ["synth", "train", "eval", "export"]


def test_an_export_stopped_half_way_is_not_reused(tmp_path, fake):
    prepare(tmp_path)
    fake.stop_in = "export"  # the fp32 bundle replaced the int8 one, the int8 stamp stayed
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, "--precision", "fp32")
    fake.stop_in = None
    fake.ran.clear()

    prepare(tmp_path)

    assert fake.ran == ["eval", "export"]


def test_a_data_set_stopped_half_way_is_written_again(tmp_path, fake):
    prepare(tmp_path)
    fake.stop_in = "synth"
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, "--fresh")
    fake.stop_in = None
    fake.ran.clear()

    prepare(tmp_path)

    assert fake.ran[0] == "synth"


@pytest.mark.parametrize("where", ["a file", "read-only"])
def test_an_artefacts_folder_it_cannot_write_is_a_message(tmp_path, fake, where):
    if where == "a file":
        (tmp_path / "runs").write_text("not a folder")
        out = tmp_path / "runs" / "demo"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        out = tmp_path / "runs"
        out.mkdir()
        out.chmod(0o500)

    with pytest.raises(SystemExit) as e:
        run.main(["--quick", "--out", str(out)])

    assert str(e.value).startswith(f"demo: cannot write the artefacts to {out} (")
    assert "--out DIR" in str(e.value)
    assert fake.ran == []
