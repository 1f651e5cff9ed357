import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from agent import codes
from agent.protect import DeviceKey, Protector
from agent.store import TemplateStore, majority


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)], capture_output=True, text=True
    )


def test_capacity_command_prints_table_and_largest_t():
    out = _cli("capacity", "--bits", 32, "--gallery", 1000)
    assert out.returncode == 0, out.stderr
    assert "largest t with FPIR <= 0.01: 4" in out.stdout
    data = json.loads(_cli("capacity", "--bits", 32, "--gallery", 10000, "--json").stdout)
    assert data["largest_t"] == 2 and data["rows"][0]["t"] == 0


def test_gallery_commands(tmp_path):
    db, key_path = tmp_path / "t.db", tmp_path / "device.key"
    rng = np.random.default_rng(0)
    prints = codes.pack_bits(rng.random((3, 32)) > 0.5)
    with TemplateStore(db, Protector(DeviceKey.load_or_create(key_path), 32)) as store:
        store.enroll("alice", print_codes=prints)
        store.enroll("bob", vein_codes=prints)
    base = ("--db", db, "--key", key_path)
    listed = json.loads(_cli("gallery", "list", *base).stdout)
    assert [s["label"] for s in listed] == ["alice", "bob"]
    shown = json.loads(_cli("gallery", "show", "alice", *base).stdout)
    assert shown["templates"] == {"print/majority": 1, "print/sample": 3}
    assert _cli("gallery", "revoke", "bob", *base).returncode == 0
    stats = json.loads(_cli("gallery", "stats", *base).stdout)
    assert (stats["subjects"], stats["revoked"], stats["bits"]) == (1, 1, 32)

    old_id = stats["key_id"]
    out = _cli("gallery", "rekey", *base)
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)
    assert ids["old_key_id"] == old_id != ids["new_key_id"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    new_key = DeviceKey.load(key_path)
    assert new_key.key_id == ids["new_key_id"]
    assert not (tmp_path / "device.key.new").exists()
    with TemplateStore(db, Protector(new_key, 32)) as store:
        labels, packed = store.gallery("print")
        assert labels == ["alice"]
        assert np.array_equal(packed, store.protector.protect(majority(prints, 32)))

    key_path.chmod(0o644)
    out = _cli("gallery", "list", *base)
    assert out.returncode == 2 and "chmod 600" in out.stderr
    out = _cli("gallery", "list", "--db", tmp_path / "none.db", "--key", key_path)
    assert out.returncode == 2 and "no template database" in out.stderr


def test_enroll_refuses_a_capture_count_out_of_range_before_it_starts():
    """The range the config and the MQTT command allow; -1 used to fail mid-enrollment with
    'need at least one array to stack'."""
    for value, said in (("-1", "-1 is not between 1 and 50"), ("x", "'x' is not a whole number")):
        out = _cli("enroll", "bob", "--captures", value, "--config", "missing.yaml")
        assert out.returncode == 2 and said in out.stderr, out.stderr


def test_capacity_refuses_what_it_cannot_answer():
    """An unsupported --bits was a traceback; a gallery of 0 or -5 and a target rate of 2 or -1
    printed tables (rates below zero, 'largest t: 32')."""
    for args, said in (
        (("--bits", 33, "--gallery", 10), "33 is not a supported code length; use 16, 32, 64, 128"),
        (("--gallery", 0), "0 is not a gallery size"),
        (("--gallery", -5), "-5 is not a gallery size"),
        (("--gallery", 10, "--target-fpir", 2), "2 is not a rate between 0 and 1"),
        (("--gallery", 10, "--target-fpir", -1), "-1 is not a rate between 0 and 1"),
    ):
        out = _cli("capacity", *args)
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_gallery_on_something_that_is_no_store_or_key_says_so(tmp_path):
    """A folder or another file given as --db was a sqlite3 traceback; a folder given as --key
    was told to chmod 600 the folder."""
    key_path = tmp_path / "device.key"
    DeviceKey.generate().write(key_path)
    for db, said in (
        (tmp_path, f"{tmp_path} is a folder, not a template database"),
        (key_path, f"{key_path} is not a template database"),
    ):
        out = _cli("gallery", "list", "--db", db, "--key", key_path)
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    db = tmp_path / "t.db"
    with TemplateStore(db, Protector(DeviceKey.load(key_path), 32)):
        pass
    out = _cli("gallery", "list", "--db", db, "--key", tmp_path)
    assert out.returncode == 2 and f"device key {tmp_path} is not a file" in out.stderr


def test_rekey_by_root_leaves_the_key_to_its_owner(tmp_path):
    """security.md's `sudo palm-agent gallery rekey` with the service stopped: the new key was
    root's (mode 0600), and the service's dynamic user could not read it at its next start;
    systemd does not chown the files of a state folder that is already the service's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the files to another user")
    db, key_path = tmp_path / "t.db", tmp_path / "device.key"
    with TemplateStore(db, Protector(DeviceKey.load_or_create(key_path), 32)) as store:
        store.enroll("alice", print_codes=codes.pack_bits(np.ones((2, 32), bool)))
    service = 61234  # a dynamic user's uid
    for path in (tmp_path, db, key_path):
        os.chown(path, service, service)
    out = _cli("gallery", "rekey", "--db", db, "--key", key_path)
    assert out.returncode == 0, out.stderr
    st = key_path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (service, service, 0o600)


def test_a_damaged_store_is_refused_when_opened_in_one_line(tmp_path):
    """A store damaged past its first page (a power cut on a failing SD card) opened: then every
    gallery read failed, so the daemon started and logged a traceback at each capture, and
    ``gallery list`` ended in a sqlite3 traceback."""
    from agent.store import StoreError

    db, key_path = tmp_path / "t.db", tmp_path / "device.key"
    key = DeviceKey.load_or_create(key_path)
    rng = np.random.default_rng(0)
    with TemplateStore(db, Protector(key, 32)) as store:
        for i in range(50):
            store.enroll(f"s{i}", rng.integers(0, 2**32, (5, 1), dtype=np.uint32))
    with open(db, "r+b") as f:  # the second and third pages overwritten
        f.seek(4096)
        f.write(b"\xa5" * 3000)
    out = _cli("gallery", "list", "--db", db, "--key", key_path)
    said = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in said, said
    assert f"store damaged: {db}: " in said and "restore t.db from a backup" in said, said
    with pytest.raises(StoreError, match="store damaged"):
        TemplateStore(db, Protector(key, 32))


def test_gallery_without_the_right_to_the_state_folder_says_so(tmp_path):
    """``palm-agent gallery list`` without sudo, on the service's state folder (mode 0700, the
    service's user's), ended in a PermissionError traceback."""
    from .conftest import unprivileged

    state = tmp_path / "state"
    state.mkdir()
    db, key_path = state / "templates.sqlite", tmp_path / "device.key"
    with TemplateStore(db, Protector(DeviceKey.load_or_create(key_path), 32)):
        pass
    state.chmod(0)
    try:
        out = unprivileged(
            "import sys\nfrom agent.cli import main\nsys.exit(main(['gallery', 'list', '--db', "
            f"{str(db)!r}, '--key', {str(key_path)!r}]))\n"
        )
    finally:
        state.chmod(0o700)
    said = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in said, said
    assert f"error={db}: Permission denied" in said and "run as root" in said, said
