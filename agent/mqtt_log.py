"""What the MQTT transport says about a broker outage: one WARNING when it begins, one INFO when
it ends, and paho's complaints on every reconnect attempt in between at DEBUG.

paho logs "Client is not connected" at ERROR on each reconnect attempt while the broker is
away (every ``mqtt.reconnect_max`` seconds at most): an outage of a night filled the journal
with ERROR lines that said nothing the first WARNING had not, and hid real errors.
"""

from __future__ import annotations

import logging
import time
from typing import Any

# paho's messages (their format strings) that only restate that the broker is away
TRANSIENT = (
    "Client is not connected",
    "failed to receive on socket",
    "timeout on socket",
    "Connection failed, retrying",
)


class PahoLog(logging.LoggerAdapter):
    """paho's log into ``logger``, its outage complaints (:data:`TRANSIENT`) at DEBUG."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level > logging.DEBUG and isinstance(msg, str) and msg.startswith(TRANSIENT):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class Outage:
    """Whether the broker is away, so that each outage is said once (paho's thread only)."""

    def __init__(self) -> None:
        self._since: float | None = None

    def begin(self) -> bool:
        """The link is down; True if that starts an outage (the caller says so, once)."""
        if self._since is not None:
            return False
        self._since = time.monotonic()
        return True

    def end(self) -> float | None:
        """Connected: how long the outage that this ends lasted, or None if there was none."""
        since, self._since = self._since, None
        return None if since is None else time.monotonic() - since
