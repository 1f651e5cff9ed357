"""What it takes for a file the device writes to be found again after a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_folder(folder: str | Path) -> None:
    """Sync a folder's entries: a file's own fsync does not record that its name exists."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
