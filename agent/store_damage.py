"""A damaged template store: stop, and say in one line what to do.

A store damaged under a running daemon (a failing SD card, a file copied over it) made every
capture and every command that reads it end in a traceback, and the service went on failing
without stopping: the journal filled with them and nothing told the operator what to do. The
daemon now stops with exit code 2, as it does when the store is refused at start, after one
ERROR line and a ``store_damaged`` event. That line, a start refused for a damaged store and
``palm-agent enroll`` on one say it in the same words, those of :func:`damaged`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

EXIT_STORE_DAMAGED = 2  # as a store refused at start (agent.run_cli.EXIT_CONFIG)
_SIGNS = ("not a database", "malformed")  # what SQLite says of a damaged file


def damage(err: BaseException) -> str | None:
    """What SQLite said of the damaged store in ``err`` (or what it was raised from), or None
    when ``err`` says nothing of the kind."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, sqlite3.DatabaseError) and any(s in str(e) for s in _SIGNS):
            return str(e)
    return None


def remedy(path: str | Path) -> str:
    """What the operator does about a damaged store at ``path``."""
    p = Path(path)
    return (
        f"restore {p.name} from a backup, or move it and its -wal and -shm files aside and "
        "enroll everyone again (palm-agent enroll SUBJECT --config CONFIG, with the service "
        "stopped)"
    )


def damaged(path: str | Path, what: str) -> str:
    """One line: the store at ``path``, what SQLite said of it, and what to do."""
    what = " ".join(what.split())  # quick_check's findings span lines
    return f"{path}: {what} — {remedy(path)}"
