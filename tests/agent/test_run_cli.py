"""``palm-agent run`` and ``palm-agent enroll`` as an installer meets them: what stops them, and
what a stopped start leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .test_daemon import ROOT, Agent, NoBroker, agent_config, wait_until, write_replay


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_second_process_on_the_same_store_is_refused(running_broker, palm_bundle, tmp_path):
    """A second daemon on one store started, and with the same device id each took the broker
    connection from the other once a second (and both read the camera and the outbox); an
    on-device enrollment beside the service fought it for the camera."""
    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev25", palm_bundle, replay)
    first = Agent(cfg)
    try:
        assert wait_until(lambda: "daemon running" in first.text(), timeout=30), first.text()
        for argv in (("run", "--config", cfg), ("enroll", "bob", "--config", cfg)):
            out = _cli(*argv)
            assert out.returncode == 2, out.stderr[-2000:]
            said = out.stderr.strip()
            assert said.startswith(f"palm-agent: another palm-agent (pid {first.proc.pid})"), said
            assert "systemctl stop palm-agent" in said and len(said.splitlines()) == 1, said
        assert "mqtt disconnected" not in first.text()  # nobody took its connection
        assert first.terminate() == 0
    finally:
        first.kill()
    out = _cli("enroll", "bob", "--config", cfg)  # the lock went with the daemon
    assert out.returncode == 0, out.stderr[-2000:]


def test_enroll_on_the_device_needs_no_broker_secret(palm_bundle, tmp_path):
    """``palm-agent enroll`` never connects: the profiles' ${PALM_MQTT_PASSWORD}, set only for the
    service, and a credential under /run/credentials stopped it before it started."""
    replay = write_replay(tmp_path / "r", [0] * 4)

    class NoBroker:
        def mqtt_section(self, device: str) -> dict:
            return {
                "host": "broker.lan",
                "user": device,
                "password": "${PALM_MQTT_PASSWORD}",
                "tls_ca_certs": "/run/credentials/palm-agent.service/ca",
            }

    cfg = agent_config(tmp_path, NoBroker(), "dev26", palm_bundle, replay)
    env = {k: v for k, v in os.environ.items() if k != "PALM_MQTT_PASSWORD"}
    out = _cli("enroll", "carol", "--config", cfg, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # a typo in the section it does not use is still one
    doc = yaml.safe_load(cfg.read_text())
    doc["mqtt"]["pasword"] = "x"
    cfg.write_text(yaml.safe_dump(doc))
    out = _cli("enroll", "dave", "--config", cfg, env=env)
    assert out.returncode == 2 and "mqtt.pasword: unknown key" in out.stderr, out.stderr
    # and the service still needs its secret
    doc["mqtt"] = NoBroker().mqtt_section("dev26")
    cfg.write_text(yaml.safe_dump(doc))
    out = _cli("run", "--config", cfg, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "PALM_MQTT_PASSWORD is not set" in out.stderr and "EnvironmentFile" in out.stderr


def test_enroll_on_the_device_refuses_an_enrolled_palm_unless_allowed(
    running_broker, palm_bundle, tmp_path
):
    """``palm-agent enroll``: the duplicate check's refusal is one line naming the enrolled
    subject and the flag; with the flag the palm is enrolled and the log warns."""
    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev26", palm_bundle, replay)
    assert _cli("enroll", "alice", "--config", cfg).returncode == 0
    out = _cli("enroll", "alice2", "--config", cfg)
    assert out.returncode == 1, out.stderr[-2000:]
    said = out.stderr.strip().splitlines()[-1]
    assert said.startswith("palm-agent: enrollment refused: 'alice2' matches enrolled 'alice'")
    assert "revoke 'alice' first" in said and "--allow-duplicate" in said, said
    out = _cli("enroll", "alice2", "--allow-duplicate", "--config", cfg)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "enroll duplicate_allowed subject=alice2 matches=alice" in out.stderr, out.stderr


def test_a_start_refused_for_its_bundle_creates_no_key(running_broker, tmp_path):
    """The device key was created before the bundle was read: a daemon started with a mistyped
    bundle path left a fresh key (and its folder) behind."""
    replay = write_replay(tmp_path / "r", [0])
    state = tmp_path / "state"
    cfg = agent_config(
        tmp_path, running_broker, "dev27", tmp_path / "no-such-bundle.tar", replay,
        store={"path": str(state / "templates.sqlite"), "key_path": str(state / "device.key")},
    )  # fmt: skip
    out = _cli("run", "--config", cfg)
    assert out.returncode == 2 and "no-such-bundle.tar" in out.stderr, out.stderr
    assert not (state / "device.key").exists()


def test_an_outbox_that_cannot_be_opened_is_one_line(running_broker, palm_bundle, tmp_path):
    replay = write_replay(tmp_path / "r", [0])
    (tmp_path / "outbox-folder").mkdir()
    cfg = agent_config(
        tmp_path, running_broker, "dev28", palm_bundle, replay,
        outbox={"path": str(tmp_path / "outbox-folder")},
    )  # fmt: skip
    out = _cli("run", "--config", cfg)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("palm-agent: outbox ") and "Traceback" not in out.stderr, out.stderr


def test_a_damaged_outbox_says_what_moving_it_aside_loses(running_broker, palm_bundle, tmp_path):
    """A damaged outbox stopped the start with SQLite's words alone; beside the template store,
    whoever met it could not tell that moving it aside loses only unsent decisions."""
    replay = write_replay(tmp_path / "r", [0])
    outbox = tmp_path / "outbox.sqlite"
    outbox.write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8192)
    cfg = agent_config(tmp_path, running_broker, "dev28", palm_bundle, replay)
    out = _cli("run", "--config", cfg)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"palm-agent: outbox {outbox}: "), last
    assert "only decisions not yet sent" in last and "move it" in last, last


def test_the_lock_is_taken_after_the_other_user_made_it(tmp_path):
    """The service's user and root (an enrollment by hand) each create the lock in turn: the
    file is left readable, and one opened read-only still locks."""
    from agent.run_cli import hold_store

    store = tmp_path / "templates.sqlite"
    old = os.umask(0o077)  # the unit's UMask
    try:
        fd = hold_store(store)
    finally:
        os.umask(old)
    os.close(fd)
    lock = Path(f"{store}.lock")
    assert lock.stat().st_mode & 0o777 == 0o644
    assert lock.read_text().strip() == str(os.getpid())


def test_gpio_that_cannot_be_driven_is_one_line_with_the_reasons(
    running_broker, palm_bundle, tmp_path
):
    """Switched light on a machine where gpiozero finds no pin factory (a Pi whose venv cannot
    see lgpio, or whose /proc hides the board's revision) was a traceback ending in "Unable to
    load any default pin factory!", the reason of each factory only in warnings above it."""
    import importlib.util

    if importlib.util.find_spec("gpiozero") is None:
        pytest.skip("gpiozero is not installed (the [dev] extra has it)")
    replay = write_replay(tmp_path / "r", [0])
    cfg = agent_config(
        tmp_path, running_broker, "dev29", palm_bundle, replay,
        camera={"layout": "switched", "illumination": {"print_pin": 17, "vein_pin": 27}},
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPIOZERO_")}
    out = _cli("run", "--config", cfg, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("palm-agent: camera.layout 'switched' needs GPIO pins"), last
    assert "Falling back from native:" in last and "Traceback" not in out.stderr, out.stderr


def test_a_watchdog_abort_leaves_the_stacks_in_the_journal(running_broker, palm_bundle, tmp_path):
    """WatchdogSec=: systemd ends a daemon that stopped pinging with SIGABRT. The journal then
    said only "Watchdog timeout" and the signal, nothing of where the loop hung."""
    import signal

    replay = write_replay(tmp_path / "r", [0])
    agent = Agent(agent_config(tmp_path, running_broker, "dev30", palm_bundle, replay))
    try:
        # in its steady loop (a decision made): faulthandler walks every thread's frames, and
        # one caught while it is being started can make the dump itself fault (SIGSEGV)
        assert wait_until(lambda: "decision event=" in agent.text(), timeout=30), agent.text()
        agent.proc.send_signal(signal.SIGABRT)
        assert agent.proc.wait(timeout=10) == -signal.SIGABRT
        log = agent.text()
        assert "Fatal Python error: Aborted" in log, log[-3000:]
        assert "agent/daemon.py" in log and "in run" in log, log[-3000:]
    finally:
        agent.kill()


def test_verbose_is_debug_over_the_configs_level(running_broker, palm_bundle, tmp_path):
    """`palm-agent -v run`: build() set the config's logging.level (INFO) after -v had set DEBUG,
    so -v did nothing; and debug lines carry no secret."""
    replay = write_replay(tmp_path / "r", [0])
    cfg = agent_config(tmp_path, running_broker, "dev30", palm_bundle, replay)
    log = tmp_path / "verbose.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "-v", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_until(lambda: " DEBUG agent.mqtt: Received CONNACK" in log.read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    secret = yaml.safe_load(cfg.read_text())["mqtt"]["password"]
    assert secret not in log.read_text()


def test_enroll_refuses_a_label_before_anyone_holds_a_hand_up(palm_bundle, tmp_path):
    """A label the MQTT commands refuse ("a b", 65 characters) was enrolled, and then could not
    be revoked over MQTT; an enrolled one was refused only after every capture was taken."""
    from .test_daemon import enroll_cli

    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, NoBroker(), "dev31", palm_bundle, replay, camera={"fps": 2})
    for label in ("a b", "x" * 65, ""):
        out = _cli("enroll", label, "--config", cfg)
        assert out.returncode == 2 and "is not a subject label" in out.stderr, out.stderr
    assert enroll_cli(cfg, "erin")["subject"] == "erin"
    out = _cli("enroll", "erin", "--config", cfg)
    assert out.returncode == 1, out.stderr
    # refused by the check before the captures, not by the store after them
    last = out.stderr.strip().splitlines()[-1]
    assert last == "palm-agent: subject 'erin' is already enrolled; revoke it first", last


def test_version():
    from agent import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"palm-agent {__version__}", out


def test_a_bundle_file_the_process_cannot_read_is_one_line(palm_bundle, tmp_path):
    """A bundle folder copied in with a model only its owner could read stopped the start with
    a PermissionError traceback and exit code 1; a bundle error is one line and exit code 2."""
    import shutil

    from .conftest import unprivileged

    bundle = tmp_path / "bundle"
    shutil.copytree(palm_bundle, bundle)
    model = bundle / "print.fp32.onnx"
    model.chmod(0)
    replay = write_replay(tmp_path / "r", [0])

    cfg = agent_config(tmp_path, NoBroker(), "dev29", bundle, replay)
    out = unprivileged(
        f"import sys\nfrom agent.cli import main\nsys.exit(main(['enroll', 'erin', '--config', "
        f"{str(cfg)!r}]))\n"
    )
    said = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in said, said
    assert said.splitlines()[-1].startswith(f"palm-agent: {model}: cannot be read"), said
    assert "chmod -R a+rX" in said, said


def test_a_bundle_of_another_code_length_than_the_store_says_what_to_do(palm_bundle, tmp_path):
    """A 32-bit bundle deployed over a store enrolled with 64-bit codes was refused as "holds
    64-bit codes, the protector 32", which named neither the bundle nor a way out."""
    from agent.protect import DeviceKey, Protector
    from agent.store import TemplateStore

    replay = write_replay(tmp_path / "r", [0])

    cfg = agent_config(tmp_path, NoBroker(), "dev30", palm_bundle, replay)
    key = DeviceKey.load_or_create(tmp_path / "device.key")
    TemplateStore(tmp_path / "templates.sqlite", Protector(key, 64)).close()
    out = _cli("enroll", "fay", "--config", cfg)
    said = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "holds 64-bit codes, and the bundle in use makes 32-bit codes" in said, said
    assert "deploy a 64-bit bundle again" in said and "enroll everyone again" in said, said


def test_an_offline_rekey_beside_the_running_daemon_is_refused(
    running_broker, palm_bundle, tmp_path
):
    """``palm-agent gallery rekey`` beside the service re-protected the templates under a new
    key while the daemon went on protecting probes with the old one: it reloaded the changed
    gallery, and every enrolled palm was refused (decision unknown) until a restart."""
    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev25", palm_bundle, replay)
    assert _cli("enroll", "alice", "--config", cfg).returncode == 0
    key_path, db = tmp_path / "device.key", tmp_path / "templates.sqlite"
    key = key_path.read_bytes()
    rekey = ("gallery", "rekey", "--db", db, "--key", key_path)
    first = Agent(cfg)
    try:
        assert wait_until(lambda: "daemon running" in first.text(), timeout=30), first.text()
        out = _cli(*rekey)
        assert out.returncode == 2, out.stderr[-2000:]
        said = out.stderr.strip().splitlines()[-1]
        assert f"another palm-agent (pid {first.proc.pid})" in said, said
        assert "rekey over MQTT" in said, said
        assert key_path.read_bytes() == key and not key_path.with_name("device.key.new").exists()
        assert first.terminate() == 0
    finally:
        first.kill()
    assert "decision=unknown" not in first.text()
    assert _cli(*rekey).returncode == 0  # the lock went with the daemon
    assert key_path.read_bytes() != key


def test_enroll_from_a_camera_that_gives_no_frame_says_it_is_the_camera(palm_bundle, tmp_path):
    """A camera that could not be opened ran the enrollment to its timeout, which then told
    the person to hold the palm flat and still."""

    cfg = agent_config(
        tmp_path, NoBroker(), "dev30", palm_bundle, tmp_path / "no-such-replay",
        enroll={"timeout": 1.5},
    )  # fmt: skip
    out = _cli("enroll", "gus", "--config", cfg)
    said = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1, out.stderr[-2000:]
    assert said.startswith("palm-agent: enrollment failed: timeout after 1.5s"), said
    assert "no frame came from the camera" in said and "hold the palm" not in said, said


def _state_folder_config(tmp_path: Path, device: str, bundle: Path) -> tuple[Path, Path]:
    """(config, state folder): the store and key in a folder of their own, as under the
    service (/var/lib/palm-agent), and no broker."""
    replay = write_replay(tmp_path / "r", [0] * 4)
    state = tmp_path / "state"
    state.mkdir()
    cfg = agent_config(
        tmp_path, NoBroker(), device, bundle, replay,
        store={"path": str(state / "templates.sqlite"), "key_path": str(state / "device.key")},
    )  # fmt: skip
    return cfg, state


def test_enroll_without_the_right_to_the_state_folder_says_to_use_sudo(palm_bundle, tmp_path):
    """``palm-agent enroll`` without sudo, beside the service's state folder (mode 0700, the
    service's user's), said only "cannot open the store's lock: Permission denied"."""
    from .conftest import unprivileged

    cfg, state = _state_folder_config(tmp_path, "dev30", palm_bundle)
    state.chmod(0)
    try:
        out = unprivileged(
            "import sys\nfrom agent.cli import main\nsys.exit(main(['enroll', 'hal', "
            f"'--config', {str(cfg)!r}]))\n"
        )
    finally:
        state.chmod(0o700)
    said = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in said, said
    assert said.splitlines()[-1].startswith(f"palm-agent: {state}/templates.sqlite.lock: "), said
    assert "Permission denied" in said and "run a command by hand as root (sudo)" in said, said


def _tree_page(db: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[
            0
        ]


@pytest.mark.parametrize("found", ["at_open", "after_open"])
def test_enroll_on_a_damaged_store_is_one_line_saying_what_to_do(
    palm_bundle, tmp_path, monkeypatch, capsys, found
):
    """``palm-agent enroll`` on a damaged store: SQLite's findings at open spanned several lines,
    and damage found after the open (a failing card) was a traceback. It is one line in the
    words of the daemon's ``store damaged`` line, and exit code 2."""
    from agent import cli, run_cli

    from .test_daemon import damage_file

    replay = write_replay(tmp_path / "r", [0] * 4)

    cfg = agent_config(tmp_path, NoBroker(), "dev9", palm_bundle, replay)
    assert _cli("enroll", "alice", "--config", cfg).returncode == 0
    store = tmp_path / "templates.sqlite"
    if found == "at_open":
        page = _tree_page(store, "templates")
        with open(store, "r+b") as f:  # the page's cells point past its end
            f.seek((page - 1) * 4096 + 8)
            f.write(b"\xff" * 4088)
    else:
        real = run_cli.build

        def build_then_damage(*args, **kw):
            daemon = real(*args, **kw)
            for part in (store, store.with_name(store.name + "-shm")):
                damage_file(part)
            return daemon

        monkeypatch.setattr(run_cli, "build", build_then_damage)
    capsys.readouterr()
    rc = cli.main(["enroll", "bob", "--config", str(cfg)])
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if ln.startswith("palm-agent:")]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(said) == 1 and "\n" not in said[0], err[-3000:]
    assert said[0].startswith(f"palm-agent: store damaged: {store}: "), said
    assert "restore templates.sqlite from a backup" in said[0], said
    assert "enroll everyone again (palm-agent enroll SUBJECT" in said[0], said


def _in_read_only_mount(folder: Path, *argv: object) -> subprocess.CompletedProcess:
    """``palm-agent ARGV`` with ``folder`` mounted read-only, as the kernel leaves a card on which
    it found errors: a read-only bind mount in a mount namespace of its own (an unprivileged
    user namespace: no root needed, and nothing outside it sees the mount)."""
    cmd = [sys.executable, "-m", "agent.cli", *map(str, argv)]
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
         str(folder), *cmd],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_state_folder_gone_read_only_says_so(palm_bundle, tmp_path):
    """The kernel remounts a card read-only when it finds errors on it. The service, restarted,
    stopped at 'cannot open the store's lock: Read-only file system', and ``palm-agent gallery
    list`` said the store was not readable and writable by this process: run as root. Each
    now names the read-only file system and what to do about it."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("no unprivileged user and mount namespaces here (unshare -Urm)")
    cfg, state = _state_folder_config(tmp_path, "dev32", palm_bundle)
    out = _cli("enroll", "carol", "--config", cfg)
    assert out.returncode == 0, out.stderr[-2000:]
    todo = "check it (journalctl -k), repair it (fsck) and mount it read-write again"
    for argv, says in (
        (("run", "--config", cfg), f"palm-agent: {state}/templates.sqlite.lock: cannot open "),
        (
            ("gallery", "list", "--db", state / "templates.sqlite", "--key", state / "device.key"),
            "gallery_failed action=list error="
            f"{state}/templates.sqlite: unable to open database file; ",
        ),
    ):
        out = _in_read_only_mount(state, *argv)
        said = out.stderr.strip()
        assert out.returncode == 2 and "Traceback" not in said, said
        assert says in said.splitlines()[-1], said
        assert f"the file system that holds {state}/" in said and "is read-only" in said, said
        assert todo in said and "sudo" not in said and "uid" not in said, said
