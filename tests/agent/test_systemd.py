"""The unit passes systemd's own checks, and the installer puts unit, config and venv in place."""

from __future__ import annotations

import os
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
        "LimitCORE=0",  # the device key and raw codes never reach a core file
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


def _values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.M)


def test_devices_are_allowed_by_class():
    """systemd looks a DeviceAllow= path up once at start and skips one that is not a device
    node ("/dev/dma_heap is not a device."): the DMA heaps libcamera allocates its buffers from
    were closed to picamera2. Their class, dma_heap in /proc/devices, names every heap."""
    allowed = [v.split()[0] for v in _values("DeviceAllow")]
    assert all(a.startswith("char-") for a in allowed), allowed
    assert "char-dma_heap" in allowed, allowed


def test_proc_keeps_what_the_runtimes_and_gpiozero_read():
    """ProcSubset=pid mounts /proc without cpuinfo and device-tree: LiteRT's XNNPACK and
    onnxruntime logged "Error in cpuinfo: failed to parse processor information from
    /proc/cpuinfo" (onnxruntime: "May cause CPU EP performance degradation"), and gpiozero's
    pin factories could not tell which Pi they run on (PinUnknownPi), so no LED or button."""
    assert _values("ProcSubset") in ([], ["all"]), _values("ProcSubset")


def test_the_working_directory_is_the_services_own():
    """lgpio, gpiozero's pin factory on a Pi, makes its notification pipe (.lgd-nfyN) in the
    current directory at import: in "/", read-only under ProtectSystem=strict, the import
    failed (FileNotFoundError: '.lgd-nfy-3') and with it every GPIO device."""
    (workdir,) = _values("WorkingDirectory")
    runtime = _values("RuntimeDirectory")
    state = _values("StateDirectory")
    assert workdir in [f"%t/{d}" for d in runtime] + [f"%S/{d}" for d in state], workdir


def test_a_relative_venv_gives_an_absolute_exec_start(tmp_path):
    """ExecStart= must be absolute: `--venv .venv` wrote ExecStart=.venv/bin/palm-agent, a unit
    systemd refuses to load."""
    rel = os.path.relpath(VENV, tmp_path)  # the test venv, named from the folder it runs in
    subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", "root", "--venv", str(rel)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    unit = tmp_path / "root/etc/systemd/system/palm-agent.service"
    assert f"ExecStart={VENV}/bin/palm-agent run" in unit.read_text()
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if "palm-agent" in ln] == []


def test_a_second_run_upgrades_the_venv_it_made(tmp_path):
    """A re-run after `git pull` skipped pip once bin/palm-agent existed: the device kept the old
    code. The venv the installer made gets this checkout every time; a --venv stays the user's."""
    venv = tmp_path / "opt/palm-agent/venv/bin"
    venv.mkdir(parents=True)
    for exe in ("palm-agent", "python"):
        (venv / exe).write_text("#!/bin/sh\n")
        (venv / exe).chmod(0o755)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", str(tmp_path), "--dry-run"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert f"+ {venv}/pip install" in out and "python3 -m venv" not in out, out
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", str(tmp_path), "--dry-run",
         "--venv", str(VENV)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "pip install" not in out, out


def test_missing_groups_of_the_unit_are_created():
    """SupplementaryGroups=video gpio: a group that does not exist (gpio on a Jetson or a plain
    Debian) stops the service before it runs (status 216/GROUP)."""
    import grp

    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--dry-run", "--venv", str(VENV)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for group in _values("SupplementaryGroups")[0].split():
        try:
            grp.getgrnam(group)
            exists = True
        except KeyError:
            exists = False
        assert (f"+ groupadd --system {group}\n" in out) == (not exists), out


def test_the_pi_venv_sees_the_system_camera_bindings():
    """libcamera's Python bindings (picamera2) and lgpio come from apt on Raspberry Pi OS: a venv
    without system site packages could never import picamera2, which deploy-pi.md then had the
    user fix by hand."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--dry-run", "--profile", "raspberry-pi",
         "--prefix", "/nonexistent-prefix"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "python3 -m venv --system-site-packages " in out, out


@pytest.mark.parametrize("profile", ["jetson", "raspberry-pi", "default"])
def test_the_jetson_gets_its_camera_drop_in(tmp_path, profile):
    """nvarguscamerasrc (the Jetson profile's CSI cameras) talks to nvargus-daemon over
    /tmp/argus_socket, which PrivateTmp=yes hid ("Connecting to nvargus-daemon failed"), and
    its NVMM buffers need devices DevicePolicy=closed did not allow."""
    subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "--prefix", str(tmp_path), "--venv", str(VENV),
         "--profile", profile],
        check=True, capture_output=True,
    )  # fmt: skip
    units = tmp_path / "etc/systemd/system"
    drop_in = units / "palm-agent.service.d/jetson.conf"
    assert drop_in.exists() == (profile == "jetson")
    if profile != "jetson":
        return
    text = drop_in.read_text()
    assert re.search(r"^BindPaths=-/tmp/argus_socket$", text, re.M), text
    assert re.search(r"^DeviceAllow=$", text, re.M) and "DevicePolicy=auto" in text
    # a drop-in reads as if appended to the unit
    merged = tmp_path / "palm-agent.service"
    merged.write_text((units / "palm-agent.service").read_text() + "\n" + text)
    r = subprocess.run(["systemd-analyze", "verify", str(merged)], capture_output=True, text=True)
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if "palm-agent" in ln] == []


def test_palm_agent_is_on_the_path(installed):
    """The docs type `sudo palm-agent gallery rekey ...`: the command lived only in the venv,
    and sudo answered "palm-agent: command not found"."""
    link = installed / "usr/local/bin/palm-agent"
    assert link.is_symlink() and os.readlink(link) == f"{VENV}/bin/palm-agent"


def _syscalls(names: list[str]) -> set[str]:
    """System calls named or in the @groups named, as systemd-analyze expands the groups."""
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
        ).stdout
        for line in listing.splitlines()[1:]:
            word = line.strip()
            if word and not word.startswith("#"):
                out |= _syscalls([word]) if word.startswith("@") else {word}
    return out


def test_the_service_may_read_the_clocks_ntp_state_and_not_set_the_clock():
    """ProtectClock and a denied @clock made adjtimex fail with EPERM even to read: every decision
    said clock_synced null under the unit, never false after a power cut."""
    assert _values("ProtectClock") in ([], ["no"])
    usable: set[str] = set()
    for line in _values("SystemCallFilter"):  # in order: an allow list, then each line edits it
        names = line.split()
        if line.startswith("~"):
            usable -= _syscalls([names[0][1:], *names[1:]])
        else:
            usable |= _syscalls(names)
    assert "adjtimex" in usable
    assert not usable & {"settimeofday", "clock_settime", "clock_adjtime"}
    assert _values("CapabilityBoundingSet") == [""]  # no CAP_SYS_TIME: adjtimex only reads
