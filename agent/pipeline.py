"""One capture through the stages to a reported decision, on the daemon's main loop.

The stages themselves live in their modules (capture, the engine's vision and decider,
k-of-n agreement, the reporter); this is the order they run in, the cooldown between decisions,
and the counts the stats report is made of.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.capture.camera import FrameLost
from agent.commands import CommandError
from agent.config import Config, mode_lacks
from agent.decide import MODE_MODALITIES, NOBODY, Agreement, Probe, Settings
from agent.notify import Notifier
from agent.reporter import Reporter

if TYPE_CHECKING:
    from agent.daemon import Engine, Source

# the daemon's own lines: a journal filtered on its logger name goes on finding them
logger = logging.getLogger("agent.daemon")


class Pipeline:
    """Capture and decide, for :class:`agent.daemon.Daemon`, whose state (declared here) it
    reads and counts into."""

    cfg: Config
    reporter: Reporter
    source: Source
    engine: Engine
    notifier: Notifier
    settings: Settings
    agreement: Agreement
    on_decision: list[Callable[[dict[str, Any]], None]]
    _stop: threading.Event
    _next_frame: float  # time.monotonic() before which no capture is taken (the cooldown)
    _frames: int
    _decisions: Counter[str]
    _rejected: Counter[str]
    _stage_ms: dict[str, list[float]]

    def _grab(self, explicit: bool = False) -> tuple[Probe | None, float]:
        wait = self._next_frame - time.monotonic()
        if wait > 0 and explicit:  # a button press or a command waits out the cooldown,
            end = time.monotonic() + wait  # pinging the watchdog: it may be longer than that
            # a SIGTERM meanwhile ends the wait (sleeps, not the stop event's wait: its handler
            # sets the event, and would wait for the event's own lock if it landed in there)
            while (left := end - time.monotonic()) > 0 and not self._stop.is_set():
                time.sleep(min(left, 1.0))
                self._tick()
        elif wait > 0:  # the loop: back to its jobs meanwhile
            time.sleep(min(wait, 0.05))
            if self._next_frame > time.monotonic():
                return None, 0.0
        started = time.monotonic()
        capture = self.source.read(MODE_MODALITIES[self.settings.mode])
        if capture is None:
            self._next_frame = time.monotonic() + 0.02
            return None, started
        self._frames += 1
        grabbed = time.monotonic()
        try:
            probe = self.engine.vision(capture.images)
        except FrameLost as e:
            logger.debug("capture dropped: %s", e)
            self._next_frame = time.monotonic() + 0.02
            return None, started
        # the read, a wait for the camera's next frame included (and vision's wait for a frame
        # still arriving); the decision's latency starts at the capture's first frame
        probe.timings["capture"] = probe.timings.get("capture", 0.0) + (grabbed - started) * 1e3
        return probe, capture.taken

    def _capture_and_decide(self, explicit: bool) -> dict[str, Any] | None:
        probe, taken = self._grab(explicit)
        if probe is None:
            if explicit:
                raise CommandError(f"no frame from the camera (state {self.source.state})")
            return None
        mode = self.settings.mode
        have = [m for m in MODE_MODALITIES[mode] if m in probe.codes]
        if not have or mode_lacks(mode, tuple(probe.codes)):
            self._rejected[probe.rejected or "no_probe"] += 1
            if probe.rejected in NOBODY and not probe.codes:
                # the hand left: its votes must not count for whoever comes next
                self.agreement.reset()
            if not explicit:
                return None
            doc = self.engine.error(self.settings, probe, taken, probe.rejected or "no_probe")
        else:
            doc = self.engine.decide(probe, self.settings, taken)
            for stage, ms in probe.timings.items():
                self._stage_ms[stage].append(ms)
            released = self.agreement.push(doc)
            if released is None:
                return None
            doc = released
        self.reporter.decision(doc)
        self._decisions[doc["decision"]] += 1
        for listener in self.on_decision:
            listener(doc)
        self._next_frame = time.monotonic() + self.cfg.trigger.cooldown
        logger.info(
            "decision event=%s decision=%s subject=%s mode=%s latency_ms=%s",
            doc["event_id"], doc["decision"], doc["subject"], doc["mode"], doc["latency_ms"],
        )  # fmt: skip
        return doc

    def _tick(self) -> None:
        """Ping the systemd watchdog from a long wait on the main loop (a cooldown, an
        enrollment's captures)."""
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog()
