"""The unit passes systemd's own checks, and the installer puts unit, config and venv in place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "palm-agent.service"
VENV = Path(sys.executable).parent.parent  # the test venv provides bin/palm-agent

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("root")
    subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", str(prefix), "--venv", str(VENV)],
        check=True,
        capture_output=True,
    )
    return prefix


def test_installer_places_unit_and_config(installed):
    unit = (installed / "etc/systemd/system/palm-agent.service").read_text()
    assert f"ExecStart={VENV}/bin/palm-agent run --config /etc/palm-agent/agent.yaml" in unit
    cfg = load_config(installed / "etc/palm-agent/agent.yaml", env={}, check_files=False)
    assert cfg.mqtt.tls
    # the service runs as a dynamic user: it must be able to read its config and directory
    assert (installed / "etc/palm-agent/agent.yaml").stat().st_mode & 0o004
    assert (installed / "etc/palm-agent").stat().st_mode & 0o005 == 0o005
    assert "ConfigurationDirectoryMode=0755" in unit
    assert cfg.mqtt.password is None, "a profile must not carry a secret in a readable file"


def test_installer_dry_run_changes_nothing(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", str(tmp_path), "--dry-run"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "python3 -m venv" in out and "pip" in out and "palm-agent.service" in out
    assert list(tmp_path.iterdir()) == []


def test_installer_help_is_its_usage_and_no_code():
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.startswith("# Install palm-agent") and "--dry-run" in out
    assert all(line.startswith("#") for line in out.splitlines()), out


def test_unit_declares_what_the_daemon_relies_on():
    text = UNIT.read_text()
    required = (
        "Type=notify", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=palm-agent",
        "DevicePolicy=closed", "ProtectSystem=strict", "NoNewPrivileges=yes",
    )  # fmt: skip
    for line in required:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    allowed = re.findall(r"^DeviceAllow=(\S+)", text, re.M)
    assert allowed and all(re.search(r"video|media|dma_heap|gpio", d) for d in allowed), allowed


def test_systemd_analyze_verify_is_clean(installed):
    unit = installed / "etc/systemd/system/palm-agent.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # verify exits 0 on warnings: the output itself must be empty of complaints about our unit
    complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if "palm-agent" in ln]
    assert r.returncode == 0 and complaints == [], r.stdout + r.stderr


def test_security_exposure_at_most_2(installed):
    unit = installed / "etc/systemd/system/palm-agent.service"
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    m = re.search(r"Overall exposure level for palm-agent\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
