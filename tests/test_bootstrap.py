"""scripts/bootstrap.sh's second run: pip only when what it installs from has changed.

pip itself cannot run here against a throwaway venv in test time (torch alone is hundreds of
MB), so the venv's python is a stand-in that records what it is asked and answers the checks;
the script, its stamp and the files it hashes are the real ones.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("constraints.txt", "pyproject.toml", "setup.cfg", "setup.py", "scripts/bootstrap.sh")

STAND_IN = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in
    *"sys.version"*) echo "3.11.7 (stand-in)" ;;
    *"import torch, onnxruntime, agent, export"*) [ ! -e "$(dirname "$0")/../broken" ] ;;
    *"print("*) echo "torch 0 onnxruntime 0" ;;
esac
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for f in FILES:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, repo / f)
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return repo


def _run(repo: Path) -> list[str]:
    log = repo / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    out = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "bootstrap: .venv ready" in out.stdout
    return [c for c in log.read_text().splitlines() if "pip install" in c]


def test_a_second_run_installs_nothing_until_its_inputs_change(tmp_path):
    repo = _repo(tmp_path)
    assert len(_run(repo)) == 3  # pip itself, torch, the package with its extras
    assert _run(repo) == []  # offline, this run still succeeds
    with (repo / "constraints.txt").open("a") as f:
        f.write("\n# a new pin\n")
    assert len(_run(repo)) == 3
    assert _run(repo) == []
    (repo / ".venv" / "broken").touch()  # an install that no longer imports
    assert len(_run(repo)) == 3
