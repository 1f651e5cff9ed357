"""A source that survives its camera: failures are reported and the camera reopened with back-off.

A USB camera unplugged, a CSI cable knocked, a driver that stops delivering: the daemon must
keep running, say so (the report callback goes to MQTT health), and pick the camera up again
when it returns, without hammering the driver while it is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.capture.base import CaptureError, EndOfStream, Frame, GrabTimeout, Source

logger = logging.getLogger(__name__)

Report = Callable[[str, dict[str, Any]], None]


class SourceUnavailable(CaptureError):
    """The camera is closed and waiting for its next reopen attempt."""


class Reopening(Source):
    """Wraps a source; ``read`` raises only CaptureError subclasses, whatever the driver does.

    Events reported: ``capture_failed`` (a read failed; the source is closed),
    ``reopen_failed`` (with the next delay), ``reopened`` (after a failure). Consecutive
    timeouts count as a failure after ``max_timeouts``, since a hung driver looks like that.
    """

    def __init__(
        self,
        source: Source,
        report: Report | None = None,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        max_timeouts: int = 3,
    ) -> None:
        self.source = source
        self.name = source.name
        self.report = report or (lambda event, fields: None)
        self.backoff_min, self.backoff_max = backoff_s
        self.max_timeouts = max_timeouts
        self.delay = self.backoff_min
        self.next_attempt = 0.0
        self.failures = 0
        self._timeouts = 0
        self._wanted = False

    @property
    def is_open(self) -> bool:
        return self.source.is_open

    def open(self) -> None:
        """Mark the source wanted and try once; a failure is reported, not raised."""
        self._wanted = True
        self._try_open(deadline=time.monotonic())

    def set_controls(self, controls: dict[str, Any]) -> None:
        """The camera's exposure and gain for the next light (picamera2 only; a source without
        them ignores it): :class:`~agent.capture.illumination.SwitchedLight` calls this on the
        wrapper, and without it the camera under switched light never got them."""
        set_controls = getattr(self.source, "set_controls", None)
        if set_controls is not None:
            set_controls(controls)

    def close(self) -> None:
        self._wanted = False
        self._close_quietly()

    def read(self, timeout: float = 1.0) -> Frame:
        deadline = time.monotonic() + timeout
        if not self.source.is_open:
            self._wanted = True
            if not self._try_open(deadline):
                raise SourceUnavailable(
                    f"{self.name}: unavailable, next reopen in "
                    f"{max(self.next_attempt - time.monotonic(), 0):.2f} s"
                )
        try:
            frame = self.source.read(max(deadline - time.monotonic(), 0.0))
        except EndOfStream:
            raise
        except GrabTimeout as e:
            self._timeouts += 1
            if self._timeouts >= self.max_timeouts:
                self._fail(e)
            raise
        except Exception as e:  # a driver may raise anything; the daemon must not die of it
            self._fail(e)
            raise CaptureError(f"{self.name}: {e}") from e
        # a frame, not an open, ends the back-off: a camera that opens and then fails every
        # read (a USB camera that enumerates but streams nothing) was reopened at the shortest
        # delay for ever, two error events each time
        self.delay, self.failures, self._timeouts = self.backoff_min, 0, 0
        return frame

    def _try_open(self, deadline: float) -> bool:
        wait = self.next_attempt - time.monotonic()
        if wait > 0:
            if time.monotonic() + wait > deadline:
                time.sleep(max(deadline - time.monotonic(), 0.0))
                return False
            time.sleep(wait)
        try:
            self.source.open()
        except Exception as e:
            self.failures += 1
            self.next_attempt = time.monotonic() + self.delay
            logger.warning(
                "capture reopen_failed source=%s error=%s retry_in_s=%.2f", self.name, e, self.delay
            )
            self.report(
                "reopen_failed", {"source": self.name, "error": str(e), "retry_in_s": self.delay}
            )
            self.delay = min(self.delay * 2, self.backoff_max)
            return False
        if self.failures:
            logger.info("capture reopened source=%s after_failures=%d", self.name, self.failures)
            self.report("reopened", {"source": self.name, "failures": self.failures})
        self._timeouts = 0
        return True

    def _fail(self, error: BaseException) -> None:
        self.failures += 1
        logger.warning("capture failed source=%s error=%s", self.name, error)
        self.report("capture_failed", {"source": self.name, "error": str(error)})
        self._close_quietly()
        self.next_attempt = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.backoff_max)

    def _close_quietly(self) -> None:
        try:
            self.source.close()
        except Exception as e:
            logger.warning("capture close_failed source=%s error=%s", self.name, e)
