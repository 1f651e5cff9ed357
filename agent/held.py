"""Messages that wait in memory for the MQTT link, bounded.

Replies and error events made while the broker is away, and decisions the outbox could not
store (a full disk), go out once the link is back; a device may be cut off for days, so each
queue keeps its newest and loses its oldest, which the transport reports.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

# topic, payload, QoS, MQTT 5 properties, and for a decision the outbox could not take the
# boot-clock time it was made (else None)
Held = tuple[str, bytes, int, Any, float | None]


class HeldQueue:
    """A bounded first-in first-out queue shared by the capture loop, the command worker and
    the MQTT pump."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.deque[Held] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()
        # a full queue's first loss was said; reset once it has emptied: a long outage lost a
        # message for every error event or reply made, and logged a WARNING for each
        self.overflow_said = False

    def put(self, item: Held) -> Held | None:
        """Adds ``item``; returns the oldest one, lost to make room, if the queue was full."""
        with self._lock:
            lost = self._items[0] if len(self._items) == self.limit else None
            self._items.append(item)
        return lost

    def get(self) -> Held | None:
        with self._lock:
            if self._items:
                return self._items.popleft()
            self.overflow_said = False
            return None

    def __len__(self) -> int:
        return len(self._items)
