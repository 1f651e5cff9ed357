import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from agent import codes
from agent.gallery import Gallery, PackedGallery, StoreGallery
from agent.match import Matcher, Thresholds
from agent.protect import DeviceKey, Protector
from agent.store import StoreError, TemplateStore, majority
from agent.store_open import MIGRATIONS

BITS = 32


def _codes(rng, n, bits=BITS):
    return codes.pack_bits(rng.random((n, bits)) > 0.5)


@pytest.fixture
def store(tmp_path):
    key = DeviceKey.load_or_create(tmp_path / "device.key")
    with TemplateStore(tmp_path / "t.db", Protector(key, BITS)) as s:
        yield s


@pytest.mark.parametrize("bits", codes.SUPPORTED_BITS)
def test_majority_template(bits):
    rng = np.random.default_rng(bits)
    samples = _codes(rng, 5, bits)
    b = codes.unpack(samples, bits)
    expected = b.sum(axis=0) >= 3
    assert np.array_equal(codes.unpack(majority(samples, bits)[None], bits)[0], expected)
    # even count: a tie takes the first sample's bit
    two = codes.unpack(samples[:2], bits)
    assert np.array_equal(codes.unpack(majority(samples[:2], bits)[None], bits)[0], two[0])
    # the rule commutes with protection, so protected samples give the protected majority
    p = Protector(DeviceKey.generate(), bits)
    for n in (2, 4, 5):
        assert np.array_equal(
            majority(p.protect(samples[:n]), bits), p.protect(majority(samples[:n], bits))[0]
        )


def test_enroll_stores_only_protected_codes(store, tmp_path):
    rng = np.random.default_rng(1)
    prints, veins = _codes(rng, 4), _codes(rng, 3)
    store.enroll("alice", print_codes=prints, vein_codes=veins)
    info = store.show("alice")
    assert info["templates"] == {
        "print/majority": 1,
        "print/sample": 4,
        "vein/majority": 1,
        "vein/sample": 3,
    }
    db = sqlite3.connect(tmp_path / "t.db")
    stored = {
        (m, k): [
            np.frombuffer(c, dtype=np.uint32)[0]
            for (c,) in db.execute(
                "SELECT code FROM templates WHERE modality=? AND kind=? ORDER BY id", (m, k)
            )
        ]
        for m in ("print", "vein")
        for k in ("sample", "majority")
    }
    assert stored[("print", "sample")] == store.protector.protect(prints)[:, 0].tolist()
    raw = set(prints[:, 0].tolist()) | set(veins[:, 0].tolist())
    assert not raw & {int(v) for vals in stored.values() for v in vals}
    labels, packed = store.gallery("print")
    assert labels == ["alice"]
    assert packed[0, 0] == store.protector.protect(majority(prints, BITS))[0, 0]
    with pytest.raises(StoreError, match="already enrolled"):
        store.enroll("alice", print_codes=prints)
    with pytest.raises(StoreError, match=r"\(n, 1\) uint32"):
        store.enroll("bob", print_codes=prints.astype(np.uint64))


def test_protected_gallery_matches_like_raw_and_refreshes(store):
    rng = np.random.default_rng(2)
    raw = {f"s{i}": (_codes(rng, 3), _codes(rng, 3)) for i in range(30)}
    for label, (p, v) in raw.items():
        store.enroll(label, print_codes=p, vein_codes=v)
    labels = list(raw)
    plain = Gallery(
        {
            "print": PackedGallery(
                labels, np.stack([majority(p, BITS) for p, _ in raw.values()]), BITS
            ),
            "vein": PackedGallery(
                labels, np.stack([majority(v, BITS) for _, v in raw.values()]), BITS
            ),
        }
    )
    t = Thresholds.from_bits(BITS, 5)
    live = StoreGallery(store)
    on_raw, on_store = Matcher(plain, t), Matcher(live, t)
    for probe_p, probe_v in zip(_codes(rng, 20), _codes(rng, 20), strict=True):
        for mode in ("print", "vein", "multi", "cross"):
            a = on_raw.identify(mode, probe_p, probe_v, top_k=3).to_dict()
            b = on_store.identify(mode, probe_p, probe_v, top_k=3).to_dict()
            assert a == b
    genuine = majority(raw["s7"][0], BITS)
    assert on_store.identify("print", genuine).subject == "s7"
    store.revoke("s7")
    after = on_store.identify("print", genuine, top_k=30)
    assert after.subject != "s7" and "s7" not in [c.subject for c in after.candidates]
    assert not on_store.verify("print", genuine, subject="s7").accepted


def test_revoke_list_stats_and_reenroll(store):
    rng = np.random.default_rng(3)
    store.enroll("a", print_codes=_codes(rng, 2))
    store.enroll("b", vein_codes=_codes(rng, 2))
    v0 = store.version()
    store.revoke("a")
    assert store.version() == v0 + 1
    assert [s["label"] for s in store.list()] == ["b"]
    assert [s["label"] for s in store.list(include_revoked=True)] == ["a", "b"]
    assert store.show("a")["templates"] == {} and store.show("a")["revoked"] is not None
    stats = store.stats()
    assert (stats["subjects"], stats["revoked"], stats["templates"]) == (1, 1, {"vein": 3})
    with pytest.raises(StoreError, match="no enrolled subject"):
        store.revoke("a")
    store.enroll("a", print_codes=_codes(rng, 2))
    assert store.show("a")["revoked"] is None


def test_rekey_renews_templates_and_the_old_key_is_refused(store, tmp_path):
    rng = np.random.default_rng(4)
    prints = {f"s{i}": _codes(rng, 3) for i in range(5)}
    for label, p in prints.items():
        store.enroll(label, print_codes=p)
    before = store.gallery("print")[1].copy()
    old = store.protector
    new = Protector(DeviceKey.generate(), BITS)
    store.rekey(new)
    after = store.gallery("print")[1]
    assert np.array_equal(after, new.protect(old.unprotect(before)))
    assert np.mean(codes.hamming_matrix(before, after).diagonal()) > BITS / 4
    m = Matcher(StoreGallery(store), Thresholds.from_bits(BITS, 0))
    assert m.verify("print", majority(prints["s2"], BITS), subject="s2").accepted
    store.close()
    with pytest.raises(StoreError, match="protected with device key"):
        TemplateStore(tmp_path / "t.db", old)


def test_schema_version_and_newer_schema_refused(store, tmp_path):
    db = sqlite3.connect(tmp_path / "t.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this software"):
        TemplateStore(tmp_path / "t.db", store.protector)


ENROLL_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from agent import codes
    from agent.protect import DeviceKey, Protector
    from agent.store import TemplateStore
    key = DeviceKey.load_or_create(sys.argv[2])
    store = TemplateStore(sys.argv[1], Protector(key, 32))
    rng = np.random.default_rng(int(sys.argv[3]))
    i = 0
    while True:
        bits = lambda n: codes.pack_bits(rng.random((n, 32)) > 0.5)
        store.enroll(f"{sys.argv[3]}-{i}", print_codes=bits(6), vein_codes=bits(5))
        i += 1
    """
)


def test_sigkill_during_enrollment_leaves_no_half_subject(tmp_path):
    db_path, key_path = tmp_path / "t.db", tmp_path / "device.key"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", ENROLL_LOOP, db_path, key_path, str(round_)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if db_path.exists():
                try:
                    with sqlite3.connect(db_path, timeout=5) as db:
                        n = db.execute(
                            "SELECT count(*) FROM subjects WHERE label LIKE ?", (f"{round_}-%",)
                        ).fetchone()[0]
                except sqlite3.OperationalError:
                    continue
                if n >= 5:
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    per_subject = db.execute(
        "SELECT s.label, "
        "sum(t.modality='print' AND t.kind='sample'), "
        "sum(t.modality='print' AND t.kind='majority'), "
        "sum(t.modality='vein' AND t.kind='sample'), sum(t.modality='vein' AND t.kind='majority') "
        "FROM subjects s LEFT JOIN templates t ON t.subject = s.id GROUP BY s.id"
    ).fetchall()
    assert len(per_subject) >= 15
    assert all(row[1:] == (6, 1, 5, 1) for row in per_subject), per_subject
    orphans = db.execute(
        "SELECT count(*) FROM templates WHERE subject NOT IN (SELECT id FROM subjects)"
    )
    assert orphans.fetchone()[0] == 0


def test_a_handle_left_on_the_old_key_cannot_write_after_another_rekeyed(tmp_path):
    """`palm-agent gallery rekey` beside the running service: the service's handle still holds
    the old key, and its next rekey (or enrollment) would write garbage under the new one."""
    from agent.gallery_cli import rekey_store

    key, db = tmp_path / "device.key", tmp_path / "t.sqlite"
    running = TemplateStore(db, Protector(DeviceKey.load_or_create(key), 32))
    raw = codes.pack_bits(np.random.default_rng(0).integers(0, 2, (3, 32)).astype(bool))
    running.enroll("alice", print_codes=raw)
    operator = TemplateStore(db, Protector(DeviceKey.load(key), 32))
    rekey_store(operator, key)
    operator.close()
    for write in (lambda: rekey_store(running, key), lambda: running.enroll("bob", raw)):
        with pytest.raises(StoreError, match=r"rekeyed to device key .* by another process"):
            write()
    assert not key.with_name("device.key.new").exists()  # the refused rekey left no key behind
    running.close()
    fresh = TemplateStore(db, Protector(DeviceKey.load(key), 32))
    labels, gallery = fresh.gallery("print")
    probe = fresh.protector.protect(majority(raw, 32)[None])
    assert labels == ["alice"] and int(codes.hamming(gallery, probe)[0]) == 0
    fresh.close()


def _on_disk(path) -> bytes:
    """Every byte SQLite keeps for the store: the database file and its write-ahead log."""
    files = (path, path.with_name(path.name + "-wal"))
    return b"".join(p.read_bytes() for p in files if p.exists())


@pytest.mark.parametrize("change", ["revoke", "rekey"])
def test_what_a_revoke_or_rekey_replaces_is_gone_from_the_files(tmp_path, change):
    """A revoke (a person leaves, or asks to be erased) or a rekey (after a leak) deleted or
    replaced the protected templates, but SQLite kept their bytes in the freed space of the
    database's pages and in the write-ahead log: a copy of the card taken afterwards still held
    them."""
    bits = max(codes.SUPPORTED_BITS)  # long codes: a match in the file cannot be chance
    rng = np.random.default_rng(5)
    path = tmp_path / "t.db"
    store = TemplateStore(path, Protector(DeviceKey.generate(), bits))
    store.enroll("alice", print_codes=_codes(rng, 5, bits), vein_codes=_codes(rng, 5, bits))
    store.enroll("bob", print_codes=_codes(rng, 5, bits))
    blobs = [
        bytes(r[0])
        for r in store.db.execute(
            "SELECT code FROM templates t JOIN subjects s ON s.id = t.subject WHERE s.label = ?",
            ("alice",),
        )
    ]
    assert len(blobs) == 12 and all(b in _on_disk(path) for b in blobs)
    if change == "revoke":
        store.revoke("alice")
    else:
        store.rekey(Protector(DeviceKey.generate(), bits))
    left = [b for b in blobs if b in _on_disk(path)]
    assert left == [], f"{len(left)} of {len(blobs)} replaced templates still on disk"
    assert len(store.gallery("print")[0]) == (1 if change == "revoke" else 2)
    store.close()
