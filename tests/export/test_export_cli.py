"""``palm-export export | verify | keygen`` on a tiny untrained checkpoint, and keygen as
docs/export.md and docs/security.md type it."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bundle import load_bundle
from export.cli import main

from .conftest import untrained_checkpoint


def test_keygen_writes_prefix_pem_and_pub_into_a_new_folder(tmp_path):
    # the documented command, `palm-export keygen --out keys/bundle`, on a fresh checkout
    assert main(["keygen", "--out", str(tmp_path / "keys" / "bundle")]) == 0
    # a dot in the prefix stays: site.2024 gives site.2024.pem, not site.pem
    assert main(["keygen", "--out", str(tmp_path / "keys" / "site.2024")]) == 0
    keys = tmp_path / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [
        "bundle.pem",
        "bundle.pub",
        "site.2024.pem",
        "site.2024.pub",
    ]
    assert stat.S_IMODE((keys / "site.2024.pem").stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (keys / "site.2024.pub").read_bytes()


def test_a_wrong_signing_key_is_refused_before_the_old_bundle_is_touched(tmp_path, capsys):
    """--sign-key naming the .pub half, a missing file or another kind of key ended the export in
    a traceback after every conversion, leaving an unsigned bundle where the old one was."""
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    (tmp_path / "junk.pem").write_text("not a key\n")
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}\n')
    capsys.readouterr()
    for key, says in (
        ("k.pub", "holds a public key; --sign-key takes the private half"),
        ("missing.pem", "No such file or directory; make one with `palm-export keygen"),
        ("junk.pem", "no unencrypted PEM private key"),
    ):
        argv = ["export", str(ckpt), "--out", str(out), "--formats", "onnx", "--precision", "fp32"]
        assert main([*argv, "--sign-key", str(tmp_path / key)]) == 2, key
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: signing key {tmp_path / key}"), err
        assert says in err[0]
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
        assert (out / "manifest.json").read_text() == '{"old": true}\n'


def test_an_output_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, capsys):
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    (tmp_path / "bundle").write_text("a file\n")
    for out, says in (("bundle", "a file, not a folder"), ("bundle/sub", "Not a directory")):
        argv = ["export", str(ckpt), "--formats", "onnx", "--precision", "fp32"]
        assert main([*argv, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: output folder {tmp_path / out}")
        assert says in err[0]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--calib", "0"], "argument --calib: 0 is below 1"),
        (["--calib", "x"], "argument --calib: invalid int value: 'x'"),
    ],
)
def test_export_values_that_cannot_work_are_refused_when_parsed(tmp_path, capsys, flags, says):
    """--calib 0 ended in a traceback after the old bundle was cleared."""
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "x.pt"), "--out", str(tmp_path / "b"), *flags])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_verify_with_a_checkpoint_the_bundle_was_not_exported_from_says_so(tmp_path, capsys):
    """verify --checkpoint of another run ran the parity check on its test split and ended in
    a traceback (codes of another length; vein images the checkpoint's set has not)."""
    ckpt = untrained_checkpoint(tmp_path / "a.pt")
    other = untrained_checkpoint(tmp_path / "b.pt", ids=4, bits=64)
    out = tmp_path / "bundle"
    argv = ["export", str(ckpt), "--out", str(out), "--formats", "onnx", "--precision", "fp32"]
    main([*argv, "--allow-degraded"])
    assert main(["verify", str(out), "--checkpoint", str(ckpt)]) in (0, 3)
    capsys.readouterr()
    assert main(["verify", str(out), "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {other} is not the checkpoint {out} was exported from (the bundle: tiny 32 bits, "
        "3 identities; the checkpoint: tiny 64 bits, 4 identities); pass that one, or verify "
        "without --checkpoint"
    )


def test_keygen_over_an_existing_key_or_under_a_file_says_so_in_one_line(tmp_path, capsys):
    """A second `keygen --out keys/bundle` ended in a FileExistsError traceback."""
    prefix = str(tmp_path / "keys" / "bundle")
    assert main(["keygen", "--out", prefix]) == 0
    pem = (tmp_path / "keys" / "bundle.pem").read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--out", prefix]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: keygen --out {prefix}: ")
    assert "bundle.pem exists; refusing to overwrite a key: choose another --out" in err[0]
    assert (tmp_path / "keys" / "bundle.pem").read_bytes() == pem
    (tmp_path / "f").write_text("x")
    assert main(["keygen", "--out", str(tmp_path / "f" / "k")]) == 2
    assert f"{tmp_path / 'f'}: a file, not a folder" in capsys.readouterr().err


# the export with its int8 quantization held up: says so on stdout, then waits to be stopped
_SLOW_INT8 = """
import sys, time
from export import convert_onnx
from export.cli import main

quantize = convert_onnx.quantize_int8

def slow(*args, **kwargs):
    print("quantizing", flush=True)
    time.sleep(120)
    return quantize(*args, **kwargs)

convert_onnx.quantize_int8 = slow
sys.exit(main(sys.argv[1:]))
"""


def _stop_export_part_way(argv: list[str], signum: int) -> subprocess.CompletedProcess:
    """``palm-export export ARGV`` in a process of its own, sent ``signum`` once the first
    model is written and the int8 quantization has begun."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-c", _SLOW_INT8, *argv]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as p:
        line = p.stdout.readline()
        if line == "quantizing\n":
            p.send_signal(signum)
        out, err = p.communicate(timeout=120)
    assert line == "quantizing\n", err
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_an_export_stopped_part_way_leaves_the_old_bundle_whole(tmp_path):
    """Ctrl-C during an export left --out with the old bundle cleared and some of the new files
    written, with no manifest: a folder that looked like a bundle and lacked files."""
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "bundle"
    argv = ["export", str(ckpt), "--out", str(out), "--formats", "onnx", "--allow-degraded"]
    assert main([*argv, "--precision", "fp32"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _stop_export_part_way([*argv, "--precision", "fp32,int8", "--tar"], signal.SIGINT)
    assert res.returncode == 130 and res.stderr.strip().endswith("interrupted"), res.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    missing = sorted(n for n in before if after.get(n) != before[n])
    assert not missing, f"{len(missing)} of the old bundle's {len(before)} files gone: {missing}"
    assert after == before  # the staging folder is removed too
    assert not out.with_name("bundle.tar").exists()
    load_bundle(out)


def test_a_staging_folder_left_by_a_killed_export_is_removed_by_the_next(tmp_path, caplog):
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "bundle"
    argv = ["export", str(ckpt), "--out", str(out), "--formats", "onnx", "--allow-degraded"]
    assert _stop_export_part_way(argv, signal.SIGKILL).returncode == -signal.SIGKILL
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".export-") and left[0].endswith(".partial")
    caplog.set_level(logging.INFO)
    assert main([*argv, "--precision", "fp32"]) == 0
    said = [r.getMessage() for r in caplog.records if "leftover staging" in r.getMessage()]
    assert said == [
        f"export removed leftover staging folders=1 out={out} (an export stopped part way): "
        + left[0]
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "centroids.npz",
        "manifest.json",
        "print.fp32.onnx",
        "vein.fp32.onnx",
    ]


def test_inspect_prints_the_weights_sha256_or_that_it_is_not_recorded(tmp_path, capsys):
    """The digest of the network a bundle's codes come from, which the device's store checks
    enrolled templates against, was in the manifest but not in what inspect printed."""
    ckpt = untrained_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "bundle"
    argv = ["export", str(ckpt), "--out", str(out), "--formats", "onnx", "--precision", "fp32"]
    assert main([*argv, "--allow-degraded"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert f"weights sha256: {manifest['weights_sha256']}" in said
    del manifest["weights_sha256"]  # as exports before it was recorded wrote them
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert "weights sha256: not recorded (exported before manifests held it)" in said
