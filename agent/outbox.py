"""The on-disk outbox: a decision is committed before it is published and gone only after PUBACK.

paho keeps unacknowledged QoS 1 messages in memory only, so a daemon restarted while the broker is
away would lose them. Rows are kept in insertion order (an autoincrement id) and replayed in that
order. The outbox is bounded: past ``max_messages`` the oldest rows are dropped, and the drops are
counted in the database so the count survives restarts and reaches the stats topic.

Two steps make an added row durable. ``add`` commits it to the write-ahead log: from then on it
survives the process (a crash, SIGKILL, a restart). ``sync`` puts the log on disk, so it survives
a power cut too; the transport's own thread calls it right after handing new rows to the
network. A decision is exposed to a power cut for as long as when ``add`` synced itself (from
its document to the end of one fsync), but the capture loop no longer waits for the disk: that
synced add took 0.30-0.34 ms of every capture on an SSD, and an fsync is slower on an SD card.

A row's age (for ``mqtt.decision_expiry``) is read on the boot clock when the row was added
since the last boot: a Raspberry Pi has no real-time clock and starts from the time it last
saved (fake-hwclock), up to an hour old and older after a power cut, until NTP steps the wall
clock forward. Decisions queued before that step looked as old as the step and were dropped
as expired, moments old. A row from an earlier boot can only be aged by the wall clock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.disk import fsync_folder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL,
    boot TEXT,
    since_boot REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _boot_id() -> str | None:
    """This boot's identity (Linux): the boot clock's readings compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


BOOT_ID = _boot_id()


def since_boot() -> float:
    """Seconds since boot, suspend included, whatever NTP does to the wall clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# how long a write waits for another process's lock on the outbox (an open sqlite3 shell):
# only the daemon uses it, so nothing else should ever hold it. Python's default, 5 s, held the
# capture loop that long on every decision, a door waiting 5 s a palm; past this one the
# decision goes out from memory (agent.mqtt)
LOCK_WAIT_S = 0.25


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes
    qos: int
    created: float  # wall clock at add
    age_s: float  # at the read, on the boot clock when the row is from this boot


class Outbox:
    """A bounded, ordered, persistent FIFO of messages waiting for their PUBACK."""

    def __init__(self, path: str | Path, max_messages: int = 10000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=LOCK_WAIT_S
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit reaches the log without an fsync; sync() makes it survive a power cut
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "boot" not in columns:
            # an outbox written before rows carried their boot: its rows age by the wall clock.
            # One transaction: a crash between the two left a table every add then failed on
            self._db.executescript(
                "BEGIN; ALTER TABLE outbox ADD COLUMN boot TEXT; "
                "ALTER TABLE outbox ADD COLUMN since_boot REAL; COMMIT;"
            )
        self._wal = Path(f"{path}-wal")
        self._wal_fd: int | None = None
        self._added = 0  # adds committed since open
        self._synced = 0  # of those, how many are known to be on disk
        # counted once here, then kept by every change: COUNT(*) walks the whole table, and
        # during an outage (a full outbox of 10,000 rows) it made each add 14 times dearer
        self._rows = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def add(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Commit one message (before it is published); drop the oldest past the bound.

        Committed is not yet on disk: see :meth:`sync`.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, created, boot, since_boot) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, time.time(), BOOT_ID, since_boot()),
                )
                rows = self._rows + 1
                excess = rows - self.max_messages
                if excess > 0:
                    rows -= self._db.execute(
                        "DELETE FROM outbox WHERE id IN "
                        "(SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    ).rowcount
                    self._bump("dropped", excess)
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite has rolled back itself after some errors (a full disk): a ROLLBACK
                # then failed and its "no transaction is active" hid the error that mattered
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._rows = rows
            self._added += 1
            return int(cur.lastrowid)

    def unsynced(self) -> int:
        """Adds committed but not yet known to be on disk."""
        return self._added - self._synced

    def sync(self) -> None:
        """Put every committed add on disk: one fsync of the write-ahead log.

        Called from one thread (the transport's pump), while adds go on in another: an add
        committed after this read of the count is left for the next call. The first sync also
        syncs the folder, so that the log file itself is found after a power cut.
        """
        target = self._added
        if target == self._synced:
            return
        if self._wal_fd is None:
            self._wal_fd = os.open(self._wal, os.O_RDONLY)
            fsync_folder(self._wal.parent)
        os.fsync(self._wal_fd)
        self._synced = target

    def after(self, last_id: int, limit: int = 100) -> list[Pending]:
        """Pending messages with id > last_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, created, boot, since_boot FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        wall, boot_clock = time.time(), since_boot()

        def age(created: float, boot: str | None, added: float | None) -> float:
            this_boot = BOOT_ID is not None and boot == BOOT_ID and added is not None
            return max(0.0, boot_clock - added if this_boot else wall - created)

        return [Pending(r[0], r[1], bytes(r[2]), r[3], r[4], age(*r[4:7])) for r in rows]

    def ack(self, *msg_ids: int) -> None:
        """Forget delivered messages (one commit for all), without an fsync of their own.

        A delete lost to a power cut only sends the message again, which at-least-once delivery
        allows (consumers drop repeats by ``event_id``), and the next :meth:`sync` puts it on
        disk with the adds. On an SD card a sync per acknowledgement doubled the cost of a
        decision.
        """
        if not msg_ids:
            return
        marks = ",".join("?" * len(msg_ids))
        with self._lock:
            self._rows -= self._db.execute(
                f"DELETE FROM outbox WHERE id IN ({marks})", msg_ids
            ).rowcount

    def discard(self, msg_id: int, counter: str) -> None:
        """Remove a message that will never be delivered (refused, expired) and count why."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,)).rowcount
            if deleted:
                self._bump(counter, deleted)
            self._db.execute("COMMIT")
            self._rows -= deleted

    def depth(self) -> int:
        return self._rows

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._db.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    def _bump(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )
