"""Opening a template store: its schema and the checks that refuse one that cannot be used.

Kept apart from :mod:`agent.store`, which is what a store does once open: the words for each
refusal (damaged, not a database, not ours to write, newer than this software) are all here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from agent.store_damage import damaged
from agent.store_unwritable import on_read_only

logger = logging.getLogger("agent.store")  # the store's own lines, as before the split

MIGRATIONS: list[str] = [
    # 1: subjects, their templates, and store-wide facts (bits, key id, change counter)
    """
    CREATE TABLE subjects (
        id INTEGER PRIMARY KEY,
        label TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY,
        subject INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        modality TEXT NOT NULL CHECK (modality IN ('print', 'vein')),
        kind TEXT NOT NULL CHECK (kind IN ('sample', 'majority')),
        code BLOB NOT NULL,
        bits INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX templates_by_subject ON templates(subject, modality, kind);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('version', '0');
    """,
]


class StoreError(RuntimeError):
    """A store that cannot be used as asked (wrong key, newer schema, bad enrollment)."""


def unusable(path: Path, error: sqlite3.Error) -> str:
    """What SQLite said about a store it could not use, and the likely cause."""
    why = str(error)
    if "malformed" in why:
        return damaged_store(path, why)
    if "not a database" in why:
        return f"{path} is not a template database ({why})"
    if ("unable to open" in why or "readonly" in why) and (said := on_read_only(path)):
        return f"{path}: {why}; {said}"
    if "unable to open" in why or "readonly" in why:
        return (
            f"{path}: {why}; the file or its folder is not readable and writable by this process "
            f"(uid {os.geteuid()}): it belongs to the service's user (run as root, or over MQTT)"
        )
    return f"{path}: {why}"


def damaged_store(path: Path, detail: str) -> str:
    """As a power cut on a failing SD card or a copy cut short leaves it; in the words the daemon
    uses when it finds the store damaged while it runs."""
    return f"store damaged: {damaged(path, detail)}"


def stored_bits(path: str | Path) -> int | None:
    """Code length of an existing store (None if it has none yet), without needing a key."""
    try:  # without sudo, the service's state folder cannot even be looked into
        exists, folder = Path(path).exists(), Path(path).is_dir()
    except OSError as e:
        raise StoreError(
            f"{path}: {e.strerror}; its folder is not readable by this process (uid "
            f"{os.geteuid()}): it belongs to the service's user (run as root, or over MQTT)"
        ) from None
    if not exists:
        raise StoreError(f"no template database at {path}")
    if folder:
        raise StoreError(f"{path} is a folder, not a template database")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            try:
                row = db.execute("SELECT value FROM meta WHERE key='bits'").fetchone()
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                return None
    except sqlite3.Error as e:
        raise StoreError(unusable(Path(path), e)) from None
    return int(row[0]) if row else None


def check_intact(db: sqlite3.Connection, path: Path) -> None:
    """A damaged file is refused when it is opened: it opened, and then every gallery read
    failed, so the daemon started and logged a traceback at each capture, and ``palm-agent
    gallery list`` ended in one. ``quick_check`` reads every page once: 6 ms for a
    thousand subjects (0.8 MB) on a 2-core x86."""
    found = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    if found != ["ok"]:
        raise StoreError(damaged_store(path, "; ".join(found)))


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to this software's, one transaction per step; a newer one is refused."""
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {current}, newer than this software "
            f"({len(MIGRATIONS)}); upgrade palm-cohash"
        )
    for version in range(current, len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        logger.info("store_migrated path=%s schema=%d", path, version + 1)
