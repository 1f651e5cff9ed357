"""One capture per button press, however much its contacts bounce.

A mechanical button closes and opens several times within a few milliseconds of a press; each
edge was a press to the daemon, and each press a capture. gpiozero's ``bounce_time`` filters
edges on the pin, but not every pin factory implements it (the mock one does not, and a trigger
may come from elsewhere), so the daemon also drops presses that follow an accepted one too soon.
"""

from __future__ import annotations

import threading
import time


class Debounce:
    """Accepts a press only ``interval`` seconds or more after the last accepted one."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._lock = threading.Lock()  # presses come on the pin factory's thread(s)

    def accept(self) -> bool:
        """Whether this press counts (and, if so, starts a new quiet interval)."""
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
            return True
