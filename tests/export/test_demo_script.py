"""``scripts/demo.sh`` answers ``--help`` and refuses a bad option before the environment step.

That step (``scripts/bootstrap.sh``) creates ``.venv`` and installs every dependency on a fresh
clone: minutes, and the network. The script runs from a copy in a folder whose name has a space,
started from another current directory, with a bootstrap that only says it ran.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "palm cohash"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    (root / "scripts" / "bootstrap.sh").write_text("echo BOOTSTRAP RAN\nexit 9\n")
    (root / "export" / "demo").mkdir(parents=True)
    for f in ("export/__init__.py", "export/demo/__init__.py", "export/demo/args.py"):
        shutil.copy(ROOT / f, root / f)
    return root


def demo(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(repo / "scripts" / "demo.sh"), *args],
        cwd=repo.parent, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_help_lists_the_options_without_the_environment_step(repo):
    r = demo(repo, "--help")
    assert r.returncode == 0, r.stderr
    assert "--fresh" in r.stdout and "--quick" in r.stdout
    assert "BOOTSTRAP" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--runtime", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["--enroll", "40", "--impostors", "20"], "exceeds --ids (48)"),
    ],
)
def test_a_bad_option_stops_before_the_environment_step(repo, args, says):
    r = demo(repo, *args)
    assert r.returncode == 2
    assert says in r.stderr
    assert "BOOTSTRAP" not in r.stdout + r.stderr


def test_good_options_go_on_to_the_environment_step(repo):
    r = demo(repo, "--quick", "--fresh")
    assert r.returncode == 9
    assert "BOOTSTRAP RAN" in r.stdout
