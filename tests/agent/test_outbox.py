"""The SQLite outbox: ordered, persistent across reopen, bounded with counted drops."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.outbox import Outbox


def test_order_ack_and_persistence(tmp_path):
    p = tmp_path / "o.sqlite"
    box = Outbox(p)
    ids = [box.add("t", f"{i}".encode()) for i in range(5)]
    box.ack(ids[1])
    box.close()
    box = Outbox(p)  # a restarted daemon sees what was not acknowledged, in order
    assert [m.payload for m in box.after(0)] == [b"0", b"2", b"3", b"4"]
    assert [m.id for m in box.after(ids[2], limit=1)] == [ids[3]]
    assert box.depth() == 4


def test_bound_drops_oldest_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_messages=3)
    for i in range(7):
        box.add("t", f"{i}".encode())
    assert [m.payload for m in box.after(0)] == [b"4", b"5", b"6"]
    assert box.counter("dropped") == 4
    first = box.after(0)[0]
    box.discard(first.id, "refused")
    box.discard(first.id, "refused")  # a second discard of the same row counts nothing
    assert box.counter("refused") == 1 and box.depth() == 2
    box.close()
    assert Outbox(tmp_path / "o.sqlite", max_messages=3).counter("dropped") == 4


def test_an_add_is_committed_at_once_and_on_disk_after_sync(tmp_path, monkeypatch):
    """add() commits without an fsync of its own; sync() fsyncs the write-ahead log (and, the
    first time, its folder), and only when something was added since."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    box = Outbox(tmp_path / "o.sqlite")
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: no sync per commit
    box.sync()
    assert synced == [] and box.unsynced() == 0  # nothing added, nothing to sync
    box.add("t", b"x")
    box.add("t", b"y")
    assert synced == [] and box.unsynced() == 2
    box.sync()
    wal, folder = str(tmp_path / "o.sqlite-wal"), str(tmp_path)
    assert sorted(synced) == sorted([folder, wal]) and box.unsynced() == 0
    box.ack(box.add("t", b"z"))
    box.ack(10**9)  # an unknown id (acknowledged twice) is no error and changes nothing
    box.sync()
    assert synced[2:] == [wal] and box.depth() == 2


def test_a_committed_add_survives_a_killed_process(tmp_path):
    """What the capture loop relies on before the pump's sync: the row is in the log, which
    the operating system keeps when the process dies."""
    path = tmp_path / "o.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", _ADD_AND_WAIT, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "added"
    finally:
        child.kill()  # SIGKILL: no close, no checkpoint, no sync
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert [m.payload for m in Outbox(path).after(0)] == [b"0", b"1", b"2"]


_ADD_AND_WAIT = """
import sys, time
from agent.outbox import Outbox
box = Outbox(sys.argv[1])
for i in range(3):
    box.add("t", str(i).encode())
print("added", flush=True)
time.sleep(60)
"""


def test_depth_is_kept_without_counting_and_matches_the_table(tmp_path):
    """depth() is a number kept by each change (COUNT(*) walks the table on every add during an
    outage); any change it missed would show here against a real count."""
    import random

    p = tmp_path / "o.sqlite"
    box = Outbox(p, max_messages=25)
    rng = random.Random(3)
    ids: list[int] = []
    count = lambda: box._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]  # noqa: E731
    for step in range(400):
        op = rng.random()
        if op < 0.6 or not ids:
            ids.append(box.add("t", b"%d" % step))
        elif op < 0.8:
            box.ack(ids.pop(rng.randrange(len(ids))))  # some were dropped already: no row
        elif op < 0.9:
            box.discard(rng.choice(ids), "refused")  # a row discarded twice counts once
        else:
            box.ack(10**9)
        assert box.depth() == count(), step
    assert box.counter("dropped") > 0 and box.counter("refused") > 0  # every path was taken
    box.close()
    again = Outbox(p, max_messages=25)
    assert again.depth() == again._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] > 0


def test_a_row_ages_on_the_boot_clock_whatever_ntp_does_to_the_wall_clock(tmp_path, monkeypatch):
    """A Pi without a real-time clock boots on the time it last saved; NTP then steps the wall
    clock forward, by hours after a power cut. Rows added before the step were aged by it:
    seconds old, they were dropped as past mqtt.decision_expiry (an hour by default)."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 2 * 3600)  # before NTP: 2 h behind
    box = Outbox(tmp_path / "o.sqlite")
    box.add("t", b"before the step")
    monkeypatch.setattr(time, "time", real)  # NTP steps the clock forward
    box.add("t", b"after the step")
    ages = [m.age_s for m in box.after(0)]
    assert all(0 <= a < 5 for a in ages), ages


def test_rows_of_an_earlier_boot_or_an_older_outbox_age_by_the_wall_clock(tmp_path):
    p = tmp_path / "o.sqlite"
    db = sqlite3.connect(p)  # the outbox as the daemon wrote it before rows carried their boot
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL);"
    )
    db.execute("INSERT INTO outbox (topic, payload, qos, created) VALUES ('t', x'30', 1, ?)",
               (time.time() - 600,))  # fmt: skip
    db.commit()
    db.close()
    box = Outbox(p)
    box.add("t", b"1")
    with sqlite3.connect(p) as db:  # a row from another boot: its boot clock means nothing now
        db.execute(
            "INSERT INTO outbox (topic, payload, qos, created, boot, since_boot) "
            "VALUES ('t', x'32', 1, ?, 'an-earlier-boot', 1e9)",
            (time.time() - 300,),
        )
    old, new, earlier_boot = box.after(0)
    assert (old.payload, new.payload, earlier_boot.payload) == (b"0", b"1", b"2")
    assert 599 < old.age_s < 610 and new.age_s < 5 and 299 < earlier_boot.age_s < 310
