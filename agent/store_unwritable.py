"""A template store that cannot be written for now: its disk is full, its file system read-only,
or another process holds its lock. None of these is damage, and none stops the daemon.

Decisions only read the store (the gallery), so they go on being made and reported. A command
that writes (an enrollment, a revoke, a rekey) answered ``internal`` with a traceback in the
journal, every time; it is now refused with one reply that says what to free or end, and the
daemon logs one ERROR line and sends one ``store_unwritable`` event per episode (the first
refusal), and one INFO line when a write succeeds again.

The outbox (:mod:`agent.mqtt`) meets the same SQLite errors on the same disk, and says them the
same way: :func:`unwritable` and :func:`problem` name them, an :class:`Episode` tells the first
failure (logged at ERROR) from the ones that follow it (DEBUG).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

DISK_FULL = "disk_full"
LOCKED = "locked"
READ_ONLY = "read_only"
FAILED = "failed"  # an I/O error; the outbox also says any other SQLite error on a write so
_KINDS = {
    sqlite3.SQLITE_FULL: DISK_FULL,  # "database or disk is full"
    sqlite3.SQLITE_BUSY: LOCKED,  # "database is locked", after the busy timeout
    sqlite3.SQLITE_LOCKED: LOCKED,
    # "attempt to write a readonly database": the kernel remounts a file system read-only when
    # it finds errors on it (ext4's errors=remount-ro, Raspberry Pi OS's default for the card)
    sqlite3.SQLITE_READONLY: READ_ONLY,
    sqlite3.SQLITE_IOERR: FAILED,  # "disk I/O error": a failing card
}


def unwritable(err: BaseException) -> tuple[str, str] | None:
    """(kind, what SQLite said) when ``err`` (or what it was raised from) is the store
    unwritable for now, else None."""
    for e in (err, err.__cause__, err.__context__):
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(e, sqlite3.OperationalError) and code is not None:
            kind = _KINDS.get(code & 0xFF)  # the primary code of an extended one
            if kind is not None:
                return kind, str(e)
    return None


def any_write_error(err: sqlite3.Error) -> tuple[str, str]:
    """(kind, what SQLite said) for any error on a write: :func:`unwritable`'s, else FAILED.
    The outbox and its pump say every such error; the template store only those."""
    return unwritable(err) or (FAILED, str(err))


def problem(kind: str, path: str | Path) -> tuple[str, str]:
    """What is wrong with the store at ``path``, and what the operator does about it."""
    if kind == DISK_FULL:
        return (
            f"the disk that holds {path} is full",
            "free space on it (the journal: journalctl --vacuum-size=100M; bundles no longer used)",
        )
    if kind == LOCKED:
        return (
            f"another process has held {path} locked for longer than the wait for it (an open "
            "sqlite3 shell, a copy or backup tool)",
            "end it",
        )
    if kind == READ_ONLY:
        return (
            f"the file system that holds {path} is read-only (the kernel remounts a card "
            "read-only when it finds errors on it)",
            "check it (journalctl -k), repair it (fsck) and mount it read-write again, or "
            "replace the card",
        )
    return (
        f"SQLite could not write {path}",
        "check the disk that holds it (journalctl -k for I/O errors) and free space on it",
    )


def on_read_only(path: str | Path) -> str | None:
    """What is wrong and what to do, when the file system that holds ``path`` is mounted
    read-only, else None. A store or its lock that cannot be opened there was put down to the
    process's rights, and the operator sent to sudo."""
    try:
        ro = bool(os.statvfs(Path(path).parent).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    if not ro:
        return None
    wrong, todo = problem(READ_ONLY, path)
    return f"{wrong}: {todo}"


def refusal(kind: str, path: str | Path) -> str:
    """The reply to a command that could not write to the store."""
    wrong, todo = problem(kind, path)
    return f"{wrong}; nothing was changed: {todo}, and send the command again"


class Episode:
    """A run of writes refused, from the first refusal to the next write that succeeds.

    It is logged where it begins (ERROR) and where it ends (INFO), the refusals between at
    DEBUG: on a full disk, a line for each capture or command filled a journal whose disk was
    already full. A disk at the edge of full flaps (the outbox frees a row as the broker acks
    it, the next decision takes it, the one after is refused): an episode of the kind last
    announced that begins within ``quiet`` seconds of that announcement is not announced again,
    and neither is its end.
    """

    def __init__(self, quiet: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.kind: str | None = None  # None: no episode (writable, as far as is known)
        self.refused = 0  # writes refused since the episode began
        self.announced = False  # this episode's beginning was logged at ERROR
        self._quiet = quiet
        self._clock = clock
        self._last: tuple[str, float] | None = None  # (kind, when) of the last announcement

    def refused_now(self, kind: str) -> bool:
        """Count one refused write; True when it begins an episode, or changes its kind, that
        is to be announced: the refusal to log at ERROR."""
        began = self.kind != kind
        self.kind = kind
        self.refused += 1
        if not began:
            return False
        now = self._clock()
        last = self._last
        self.announced = last is None or last[0] != kind or now - last[1] >= self._quiet
        if self.announced:
            self._last = (kind, now)
        return self.announced

    def written(self) -> tuple[str, int] | None:
        """A write succeeded: (kind, writes refused) of the announced episode it ends, or None
        (none to end, or one not announced)."""
        if self.kind is None:
            return None
        ended = (self.kind, self.refused) if self.announced else None
        self.kind, self.refused, self.announced = None, 0, False
        return ended
