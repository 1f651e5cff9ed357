"""What the daemon reports and how commands reach it, without naming a transport.

Only ``agent/mqtt`` knows paho. The daemon holds a :class:`Reporter`, so another transport (or a
second one beside MQTT) is one more class, and the daemon's code does not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

# A command handler receives the raw payload and returns the reply document.
CommandSink = Callable[[bytes], dict[str, Any]]


class Reporter(ABC):
    @abstractmethod
    def start(self, on_command: CommandSink) -> None:
        """Connect (in the background) and route each incoming command to ``on_command``."""

    @abstractmethod
    def decision(self, doc: dict[str, Any]) -> None:
        """Queue one decision, to be delivered at least once, in order.

        On return it survives the daemon; it is on disk (survives a power cut) moments later,
        without the capture loop waiting for that.
        """

    @abstractmethod
    def stats(self, doc: dict[str, Any]) -> None:
        """Publish a health snapshot (best effort, not queued)."""

    @abstractmethod
    def error(self, doc: dict[str, Any]) -> None:
        """Publish an operational error (best effort)."""

    @abstractmethod
    def counters(self) -> dict[str, Any]:
        """Transport state for the stats document (connected, outbox depth, drops)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Deliver what is pending within ``timeout``, announce a clean stop, disconnect."""
