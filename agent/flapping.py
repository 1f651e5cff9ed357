"""Counting the broker's quick disconnects, and how long to wait after each.

A broker that closes each connection soon after accepting it most often has another client
connecting with this client id: a second device with the same ``device.id`` (an SD card cloned
from the first) or the same ``mqtt.client_id``. The two throw each other off at once, forever,
each time announcing the device offline then online and resending what was in flight.
Reconnecting later and later lets one of them work in between; the transport tells the operator
what to look at.
"""

from __future__ import annotations

import time

# A connection the broker closes sooner than STABLE_S after it opened counts towards a streak;
# from FLAPS in a row on, reconnects back off and the likely cause is reported
STABLE_S = 300.0
FLAPS = 3
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client connected with this id
# what paho reports when the broker stopped answering pings: a link gone silent (Wi-Fi out of
# range, a router restarting), never a broker that closed the connection
KEEP_ALIVE_TIMEOUT = 141


class Streak:
    """Connections in a row that the broker closed within ``STABLE_S`` of opening them.

    Used from paho's thread only (its connect and disconnect callbacks)."""

    def __init__(self, reconnect_min: float, reconnect_max: float) -> None:
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.count = 0
        self._connected_at = 0.0

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def closed(self, reason_code: int | None) -> float | None:
        """Counts a connection the broker closed (``reason_code``: its MQTT 5 reason, if
        any); returns the wait before the next connect once in a streak, else None. A link that
        went silent neither adds to a streak nor ends one: on flaky Wi-Fi each drop counted, and
        the device backed off and blamed a second client with its id."""
        if reason_code == KEEP_ALIVE_TIMEOUT:
            pass
        elif reason_code == SESSION_TAKEN_OVER:  # the broker said so: no need to wait for more
            self.count = max(self.count + 1, FLAPS)
        elif time.monotonic() - self._connected_at < STABLE_S:
            self.count += 1
        else:
            self.count = 0
        return self.back_off() if self.count >= FLAPS else None

    def back_off(self) -> float:
        """The configured minimum, doubled for each connection from the FLAPS-th in a row, up
        to the configured maximum (the doublings are capped: a streak of a day at the maximum
        overflowed a float and ended paho's thread)."""
        extra = min(max(0, self.count - FLAPS + 1), 32)
        return min(self.reconnect_min * 2.0**extra, self.reconnect_max)
