"""A template store that cannot be written for now (its disk full, its lock held by another
process): decisions go on, writes are refused with one reply that says what to do, and the
journal has one ERROR line per episode, not a traceback per command."""

from __future__ import annotations

import json
import logging
import sqlite3

import numpy as np
import pytest

from agent import codes

from .test_daemon import Controller, agent_config, run_beside, write_replay


def fill(store) -> None:
    """Hold the store to its present size (SQLite's own limit, ``max_page_count``) and fill
    it: an enrollment then finds it full, as on a full disk."""
    db = store.db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    one = np.zeros((1, codes.n_words(store.bits)), codes.word_dtype(store.bits))
    for i in range(10_000):
        try:
            store.enroll(f"filler{i}", print_codes=one)
        except sqlite3.OperationalError as e:
            assert "full" in str(e), e
            return
    raise AssertionError("the store never filled")


@pytest.mark.parametrize("kind", ["disk_full", "locked", "read_only"])
def test_a_store_that_cannot_be_written_refuses_writes_in_one_line_and_decides_on(
    running_broker, subscribe, palm_bundle, tmp_path, caplog, kind
):
    from agent.run_cli import build

    replay = write_replay(tmp_path / "r", [2] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev31", palm_bundle, replay,
                       trigger={"kind": "command"})  # fmt: skip
    sub = subscribe("palm/dev31/error")
    daemon = build(cfg)
    store = daemon.store
    assert daemon.enroll_now("alice")["subject"] == "alice"
    other = None
    writable = store.db
    if kind == "disk_full":
        fill(store)
    elif kind == "read_only":  # as after the kernel remounted the card read-only
        store.db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
    else:  # another process's write transaction, held past the (shortened) wait for it
        store.db.execute("PRAGMA busy_timeout = 300")
        other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
    seen: dict = {}

    def operator() -> None:
        ctl = Controller(running_broker, "dev31")
        try:
            for name in ("bob", "carol"):
                seen[name] = ctl.call("enroll", subject=name, allow_duplicate=True)
            seen["capture"] = ctl.call("capture")
            if other is not None:
                other.execute("COMMIT")
                other.close()
            elif kind == "read_only":  # repaired, mounted read-write again
                daemon._on_main(lambda: setattr(store, "db", writable))
            else:  # space freed
                daemon._on_main(lambda: store.db.execute("PRAGMA max_page_count = 1000000"))
            seen["again"] = ctl.call("enroll", subject="bob", allow_duplicate=True)
            seen["events"] = [json.loads(m[3]) for m in sub.wait(lambda m: True, timeout=5)]
        finally:
            ctl.close()

    caplog.set_level(logging.INFO, logger="agent")
    run_beside(daemon, operator)
    wrong = {
        "disk_full": "is full",
        "locked": "locked for longer than the wait",
        "read_only": "is read-only (the kernel remounts a card read-only",
    }[kind]
    for name in ("bob", "carol"):
        reply = seen[name]
        assert not reply["ok"] and reply["error"]["code"] == "failed", reply
        said = reply["error"]["message"]
        assert said.startswith("enrollment failed: ") and str(store.path) in said, said
        assert wrong in said and "nothing was changed" in said, said
    assert seen["capture"]["result"]["decision"] == "granted", seen  # decisions go on
    assert seen["again"]["ok"], seen["again"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert line.startswith(f"store unwritable kind={kind} path={store.path}: "), line
    assert not any(r.exc_info for r in caplog.records)  # no traceback
    assert any(
        r.getMessage() == f"store writable again kind={kind} path={store.path}"
        for r in caplog.records
    )
    events = seen["events"]
    assert [(e["event"], e["kind"]) for e in events] == [("store_unwritable", kind)], events
    assert events[0]["path"] == str(store.path), events


def test_a_disk_flapping_at_full_is_announced_once_per_quiet_period():
    """A disk at the edge of full refuses a write, takes the next, refuses the one after:
    each flap was an ERROR and an INFO line. An episode of the same kind within the quiet
    period of the last announced one is not announced, nor its end; another kind is."""
    from agent.store_unwritable import DISK_FULL, LOCKED, Episode

    now = [0.0]
    ep = Episode(quiet=600.0, clock=lambda: now[0])
    assert ep.refused_now(DISK_FULL) is True  # the first refusal: ERROR
    assert ep.refused_now(DISK_FULL) is False
    assert ep.written() == (DISK_FULL, 2)  # its end: INFO
    assert ep.written() is None  # writable already
    now[0] = 30.0
    assert ep.refused_now(DISK_FULL) is False  # a flap: quiet
    assert ep.written() is None
    assert ep.refused_now(LOCKED) is True  # another kind is news
    assert ep.written() == (LOCKED, 1)
    now[0] = 700.0
    assert ep.refused_now(DISK_FULL) is True  # past the quiet period
    assert ep.written() == (DISK_FULL, 1)
