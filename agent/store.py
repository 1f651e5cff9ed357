"""Enrolled templates in SQLite: protected codes only, one transaction per change.

Why SQLite with WAL and ``synchronous=FULL``: an enrollment (subject row, every sample, the
majority template) commits as one transaction, so a power cut or SIGKILL leaves either the whole
subject or none of it, and ``PRAGMA integrity_check`` stays clean. Readers (the daemon's gallery)
never block the CLI writing, and vice versa.

Only protected codes (see :mod:`agent.protect`) reach the disk: no image, no raw code. The
store remembers the id of the key that protected it and refuses another key, which would
otherwise make every probe silently fail to match. It also remembers the digest of the network
weights its templates were made with (``meta.weights_sha256``, see :meth:`check_weights`): a code
is comparable only with codes of the same weights. ``meta.version`` counts changes, so an
in-memory gallery reloads exactly when something changed, even from another process.

Majority template: per bit, the value most samples agree on; a tie (even sample count) takes the
first sample's bit. That rule commutes with the keyed transform, so the majority of protected
samples equals the protected majority, and ``rekey`` needs no raw codes kept anywhere.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from agent import codes
from agent.protect import Protector
from agent.store_open import (
    StoreError,
    check_intact,
    migrate,
    unusable,
)

logger = logging.getLogger(__name__)


def majority(samples: np.ndarray, bits: int) -> np.ndarray:
    """Bitwise majority of (n, words) codes; ties take the first sample's bit."""
    b = codes.unpack(samples, bits)
    ones = b.sum(axis=0) * 2
    n = len(b)
    out = np.where(ones == n, b[0], ones > n)
    return codes.pack_bits(out[None, :])[0]


class TemplateStore:
    """The device's enrolled subjects; codes go in raw and are stored protected."""

    def __init__(self, path: str | Path, protector: Protector) -> None:
        self.path = Path(path)
        self.protector = protector
        # (bundle, manifest) pairs already warned of as weights_unchecked: once, not per reload
        self._unchecked: set[tuple[str, str | None]] = set()
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a template database")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # a deleted or replaced template's bytes are overwritten with zeros, not left in
            # the page's free space for a copy of the card to read (see _scrub)
            self.db.execute("PRAGMA secure_delete=ON")
            check_intact(self.db, self.path)
            migrate(self.db, self.path)
            self.bits = self._check_key(protector)
        except sqlite3.Error as e:
            raise StoreError(unusable(self.path, e)) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TemplateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT, bumping the change counter; rolls back on any error.

        Inside the write lock the store must still be under this handle's key: another process
        (``palm-agent gallery rekey`` beside the service) may have rekeyed it, and templates
        protected, or unprotected, with the old key would be garbage under the new one.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            key_id = self._meta("key_id")
            if key_id is not None and key_id != self.protector.key_id:
                raise StoreError(
                    f"{self.path} was rekeyed to device key {key_id} by another process; this "
                    f"one holds key {self.protector.key_id}: restart it (the service: "
                    "systemctl restart palm-agent)"
                )
            yield self.db
            self.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite ends it itself on a full disk: a ROLLBACK then raised "no transaction is
            # active", in place of what was wrong
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _check_key(self, protector: Protector) -> int:
        key_id, bits = self._meta("key_id"), self._meta("bits")
        if key_id is None:
            with self._tx() as db:
                db.execute("INSERT INTO meta VALUES ('key_id', ?)", (protector.key_id,))
                db.execute("INSERT INTO meta VALUES ('bits', ?)", (str(protector.bits),))
            return protector.bits
        if key_id != protector.key_id:
            raise StoreError(
                f"{self.path} was protected with device key {key_id}, not {protector.key_id}; "
                "use the key file it was enrolled with (a pending rekey leaves it as KEY.new)"
            )
        if int(bits) != protector.bits:
            # the daemon's code length is its bundle's: a bundle exported with other bits
            raise StoreError(
                f"{self.path} holds {bits}-bit codes, and the bundle in use makes "
                f"{protector.bits}-bit codes, which cannot be compared with them: deploy a "
                f"{bits}-bit bundle again, or move the store and its -wal and -shm files aside "
                "to start an empty one, and enroll everyone again"
            )
        return int(bits)

    def check_weights(
        self, digest: str | None, bundle: str | Path = "the bundle", manifest: str | None = None
    ) -> None:
        """Refuse a bundle whose network weights are not the ones the templates were made with.

        A retrained model keeps the code length but not the code space: every enrolled palm
        came out "unknown", with nothing in the log to say why. Bundles of one checkpoint in
        another format or precision share the digest (the export's parity gate checks their
        codes agree), so switching between them goes on working. With no templates yet the
        bundle's digest is (re)recorded; a store from before the record adopts it; a bundle
        from before the digest (``digest`` None) cannot be checked, which is logged once per
        bundle path and ``manifest`` (its hash): each reload and mode change repeated it.
        """
        if digest is None:
            if (str(bundle), manifest) in self._unchecked:
                return
            self._unchecked.add((str(bundle), manifest))
            logger.warning(
                "store weights_unchecked path=%s bundle=%s: the bundle records no weights_sha256 "
                "(exported before it did), so whether its network made the enrolled templates "
                "cannot be checked; re-export it to have it checked",
                self.path, bundle,
            )  # fmt: skip
            return
        recorded = self._meta("weights_sha256")
        if recorded == digest:
            return
        held = self.db.execute("SELECT count(*) FROM templates").fetchone()[0]
        if held and recorded is not None:
            raise StoreError(
                f"{self.path} holds templates made with other network weights "
                f"({recorded[:12]}) than the bundle {bundle} ({digest[:12]}): codes of "
                "different weights never match, so no enrolled palm would be recognised; deploy "
                "the bundle the templates were enrolled with, or move "
                f"{self.path.name} and its -wal and -shm files aside and enroll everyone again"
            )
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('weights_sha256', ?)", (digest,))
        if held:
            logger.info(
                "store weights_recorded path=%s weights=%s: its %d templates, enrolled before "
                "the store recorded weights, are taken to be this bundle's",
                self.path, digest[:12], held,
            )  # fmt: skip

    def version(self) -> int:
        """Change counter: moves on every committed enrollment, revocation or rekey."""
        return int(self._meta("version"))

    def enroll(
        self,
        label: str,
        print_codes: np.ndarray | None = None,
        vein_codes: np.ndarray | None = None,
    ) -> None:
        """Store a subject's samples and majority templates in one transaction."""
        given = {m: c for m, c in (("print", print_codes), ("vein", vein_codes)) if c is not None}
        if not label or not given:
            raise StoreError("enroll needs a label and print and/or vein codes")
        dtype, words = codes.word_dtype(self.bits), codes.n_words(self.bits)
        rows = []
        for modality, raw in given.items():
            raw = np.asarray(raw)
            if raw.dtype != dtype or raw.ndim != 2 or raw.shape[1] != words or not len(raw):
                raise StoreError(
                    f"{modality} codes must be (n, {words}) {dtype} for {self.bits}-bit codes, "
                    f"got {raw.shape} {raw.dtype}"
                )
            for code in self.protector.protect(raw):
                rows.append((modality, "sample", code))
            rows.append((modality, "majority", self.protector.protect(majority(raw, self.bits))[0]))
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, revoked FROM subjects WHERE label = ?", (label,)
            ).fetchone()
            if row is not None and row[1] is None:
                raise StoreError(f"subject {label!r} is already enrolled; revoke it first")
            if row is None:
                sid = db.execute(
                    "INSERT INTO subjects(label, created, updated) VALUES (?, ?, ?)",
                    (label, now, now),
                ).lastrowid
            else:
                sid = row[0]
                db.execute(
                    "UPDATE subjects SET revoked = NULL, updated = ? WHERE id = ?", (now, sid)
                )
            db.executemany(
                "INSERT INTO templates(subject, modality, kind, code, bits, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(sid, m, k, c.tobytes(), self.bits, now) for m, k, c in rows],
            )
        logger.info("enrolled label=%s modalities=%s", label, ",".join(given))

    def revoke(self, label: str) -> None:
        """Delete a subject's templates; the subject row stays, marked revoked, for the audit."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, revoked FROM subjects WHERE label = ?", (label,)
            ).fetchone()
            if row is None or row[1] is not None:
                raise StoreError(f"no enrolled subject {label!r}")
            db.execute("DELETE FROM templates WHERE subject = ?", (row[0],))
            db.execute(
                "UPDATE subjects SET revoked = ?, updated = ? WHERE id = ?", (now, now, row[0])
            )
        self._scrub()
        logger.info("revoked label=%s", label)

    def _scrub(self) -> None:
        """Empty the write-ahead log after a revoke or a rekey: it still holds the pages as they
        were before, templates included, until it is checkpointed and truncated. A revoked
        person's templates, or the ones a leaked key protected, are then gone from the files."""
        busy, log, done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy or log != done:
            # a reader (another connection, in this process or another) holds an older
            # snapshot past the busy timeout
            logger.warning(
                "store wal_not_truncated path=%s frames=%d copied=%d: the replaced templates stay "
                "in %s-wal until the next revoke, rekey or clean close",
                self.path, log, done, self.path.name,
            )  # fmt: skip

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        where = "" if include_revoked else "WHERE revoked IS NULL"
        rows = self.db.execute(
            f"SELECT label, created, updated, revoked FROM subjects {where} ORDER BY id"
        )
        return [dict(zip(("label", "created", "updated", "revoked"), r, strict=True)) for r in rows]

    def show(self, label: str) -> dict[str, Any]:
        """A subject and a count of its templates (never the codes themselves)."""
        row = self.db.execute(
            "SELECT id, label, created, updated, revoked FROM subjects WHERE label = ?", (label,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no subject {label!r}")
        counts = self.db.execute(
            "SELECT modality, kind, count(*) FROM templates WHERE subject = ? "
            "GROUP BY modality, kind ORDER BY modality, kind",
            (row[0],),
        ).fetchall()
        info = dict(zip(("id", "label", "created", "updated", "revoked"), row, strict=True))
        info["templates"] = {f"{m}/{k}": n for m, k, n in counts}
        return info

    def stats(self) -> dict[str, Any]:
        q = self.db.execute
        per = dict(q("SELECT modality, count(*) FROM templates GROUP BY modality").fetchall())
        return {
            "subjects": q("SELECT count(*) FROM subjects WHERE revoked IS NULL").fetchone()[0],
            "revoked": q("SELECT count(*) FROM subjects WHERE revoked IS NOT NULL").fetchone()[0],
            "templates": per,
            "bits": self.bits,
            "key_id": self.protector.key_id,
            "weights_sha256": self._meta("weights_sha256"),  # of the net that made the templates
            "schema": q("PRAGMA user_version").fetchone()[0],
            "version": self.version(),
        }

    def gallery(self, modality: str) -> tuple[list[str], np.ndarray]:
        """Labels and protected majority codes (n, words) of active subjects, for matching."""
        rows = self.db.execute(
            "SELECT s.label, t.code FROM templates t JOIN subjects s ON s.id = t.subject "
            "WHERE t.modality = ? AND t.kind = 'majority' AND s.revoked IS NULL ORDER BY s.id",
            (modality,),
        ).fetchall()
        dtype, words = codes.word_dtype(self.bits), codes.n_words(self.bits)
        packed = np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(-1, words)
        return [r[0] for r in rows], packed

    def rekey(self, new: Protector) -> None:
        """Re-protect every template under a new key, in one transaction (renewability)."""
        if new.bits != self.bits:
            raise StoreError(f"the new protector is for {new.bits} bits, the store {self.bits}")
        dtype, words = codes.word_dtype(self.bits), codes.n_words(self.bits)
        with self._tx() as db:
            rows = db.execute("SELECT id, code FROM templates").fetchall()
            if rows:
                old = np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(-1, words)
                fresh = new.protect(self.protector.unprotect(old))
                db.executemany(
                    "UPDATE templates SET code = ? WHERE id = ?",
                    [(c.tobytes(), r[0]) for c, r in zip(fresh, rows, strict=True)],
                )
            db.execute("UPDATE meta SET value = ? WHERE key = 'key_id'", (new.key_id,))
        self._scrub()
        logger.info(
            "rekeyed templates=%d old_key=%s new_key=%s",
            len(rows),
            self.protector.key_id,
            new.key_id,
        )
        self.protector = new
