"""The one check that an output folder can be written, made before the work that fills it.

``train``, ``eval`` and ``export`` each ran for minutes (training to the first evaluation, a
whole evaluation, every conversion) and only then found --out naming a file, or a folder this
user cannot write, ending in a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output folder that cannot be written; ``why`` is the reason alone."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def writable(path: Path, what: str = "files", hint: str = "") -> None:
    """Try a file in ``path``, or, where it is not made yet, in the nearest folder above it there
    is: nothing is made, so a run refused next (a wrong --data-root) leaves no empty folder
    behind. Raises :class:`OutputError` saying what to do; ``hint`` adds another way out."""
    there = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        tempfile.TemporaryFile(dir=there).close()
    except OSError as exc:
        why = "a file, not a folder" if path.is_file() else (exc.strerror or str(exc))
        raise OutputError(
            f"output folder {path}: cannot write {what} there ({why}); name a folder this user "
            f"can write (it is made if missing){hint}",
            why,
        ) from exc
