import json
import stat
import subprocess
import sys

import numpy as np

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
