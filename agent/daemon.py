"""The daemon: wires capture -> vision -> decide -> reporter, commands, stats and sd_notify.

It holds no stage logic. One thread (the main loop) owns the camera, the models and the template
store; commands arriving on the transport's thread are queued to it and their replies awaited
(:mod:`agent.main_jobs`), so no stage needs to be thread-safe. The loop pings the systemd
watchdog itself, so a hung stage stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from agent import clock
from agent.capture.camera import Capture
from agent.commands import CommandError, Dispatcher
from agent.config import Config, mode_lacks
from agent.daemon_commands import DaemonCommands
from agent.debounce import Debounce
from agent.decide import MODE_MODALITIES, Agreement, Probe, Settings
from agent.main_jobs import MainJobs
from agent.match import Matcher
from agent.notify import Notifier
from agent.pipeline import Pipeline
from agent.reporter import Reporter
from agent.store_damage import EXIT_STORE_DAMAGED, damage, damaged
from agent.store_unwritable import Episode, problem, refusal, unwritable

logger = logging.getLogger(__name__)


class Source(Protocol):
    """A camera: a capture, or None when no frame is available right now."""

    state: str
    modalities: tuple[str, ...]

    def read(self, modalities: tuple[str, ...]) -> Capture | None: ...
    def close(self) -> None: ...


class Engine(Protocol):
    """What a bundle provides: the vision stages, a decider, and its identity."""

    modalities: tuple[str, ...]
    model_hash: str
    weights_sha256: str | None  # the network's weights, which the templates must share
    matcher: Matcher  # the gallery and thresholds it decides with (enrollment deduplicates)

    def suits(self, per_capture: tuple[str, ...]) -> bool: ...
    def vision(self, frames: Mapping[str, np.ndarray]) -> Probe: ...
    def decide(self, probe: Probe, s: Settings, taken: float) -> dict[str, Any]: ...
    def error(self, s: Settings, probe: Probe, taken: float, reason: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Daemon(DaemonCommands, Pipeline):
    """The main loop and its lifecycle (start, signals, errors, stop) and the stats; what the
    commands do is in :mod:`agent.daemon_commands`, a capture's way to a decision in
    :mod:`agent.pipeline`."""

    # how long a command waits for the main loop to take it up and run it (an enrollment waits
    # its own timeout more)
    command_wait_s = 30.0

    def __init__(
        self,
        cfg: Config,
        reporter: Reporter,
        source: Source,
        store: Any,
        load_engine: Callable[[tuple[str, ...]], Engine],
        rekey: Callable[[], dict[str, Any]],
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.reporter = reporter
        self.source = source
        self.store = store
        self._load_engine = load_engine
        self._rekey = rekey
        self.notifier = notifier or Notifier()
        m = cfg.match
        self.settings = Settings(m.mode, m.identify, m.subject)
        self.engine = load_engine(self._per_capture(m.mode))
        lacks = self._cannot_serve(self.engine, m.mode)
        if lacks:
            self.engine.close()
            raise ValueError(
                f"match.mode: {lacks} ({cfg.bundle.path}); set match.mode to a mode it serves, "
                "or use a bundle with those models"
            )
        try:  # templates of other weights: every palm would be "unknown" (one line, exit 2)
            store.check_weights(self.engine.weights_sha256, cfg.bundle.path, self.engine.model_hash)
        except Exception:
            self.engine.close()
            raise
        self.agreement = Agreement(m.agreement.k, m.agreement.n)
        self._stop = threading.Event()
        self._reload_asked = False
        self._jobs = MainJobs()
        self._started = time.monotonic()
        self._decisions: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._frames = 0
        self._stage_ms: dict[str, list[float]] = defaultdict(list)
        self._next_frame = 0.0
        self.on_decision: list[Callable[[dict[str, Any]], None]] = []
        self.gpio: list[Any] = []  # button / LEDs, released on stop
        self._presses = Debounce(cfg.trigger.debounce)
        self._exit = 0  # what run() returns: EXIT_STORE_DAMAGED once the store is found damaged
        self._unwritable = Episode()  # the store cannot be written now (said once)

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def request_reload(self, *_: object) -> None:
        """SIGHUP (``systemctl reload``): load the bundle again at the loop's next turn.

        A signal handler runs on the main thread between two of its steps, perhaps inside the
        job queue's lock: putting a job there from the handler waited for that lock for ever.
        """
        self._reload_asked = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        self.reporter.start(Dispatcher(self, self.cfg.commands.max_payload))
        self.notifier.ready(self._status())
        logger.info("daemon running %s", self._status())
        if clock.synced() is False:
            logger.warning(
                "clock synced=false: decisions carry clock_synced false, and their timestamps "
                "may be off, until NTP (systemd-timesyncd, chrony) sets the clock"
            )
        last_ping = last_stats = time.monotonic()
        wd = self.notifier.watchdog_interval
        try:
            while not self._stop.is_set():
                self._run_jobs(timeout=0.0 if self._presence() else 0.05)
                if self._reload_asked:
                    self._reload_asked = False
                    self._guarded(self._reload_on_signal)
                if self._presence():
                    self._guarded(lambda: self._capture_and_decide(explicit=False))
                now = time.monotonic()
                if wd is not None and now - last_ping >= wd:
                    self.notifier.watchdog()
                    last_ping = now
                if now - last_stats >= self.cfg.mqtt.stats_interval:
                    self._guarded(lambda: self.reporter.stats(self.stats()))
                    last_stats = now
        finally:
            self._shutdown()
        return self._exit

    def close(self) -> None:
        """Release the camera, GPIO, models and template store of a daemon that is not run
        (``palm-agent enroll``, benches, tests); :meth:`run` releases them on its way out, the
        MQTT client's flush in between."""
        self.source.close()
        for device in self.gpio:
            device.close()
        self.engine.close()
        self.store.close()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        logger.info("daemon stopping")
        self._jobs.close()
        self.source.close()
        logger.info("camera closed state=%s", self.source.state)
        for device in self.gpio:
            device.close()
        self.reporter.stop(self.cfg.outbox.flush_timeout)
        self.engine.close()
        self.store.close()
        logger.info("daemon stopped decisions=%s", dict(self._decisions))

    def _guarded(self, step: Callable[[], Any]) -> None:
        """One bad frame or a failing stage is reported; it never ends the service."""
        try:
            step()
        except Exception as e:
            if self._store_damaged(e) or self._store_unwritable(e):
                return
            self._rejected["pipeline_error"] += 1
            logger.exception("pipeline error")
            self.reporter.error({"event": "pipeline_error", "error": f"{type(e).__name__}: {e}"})
            self._next_frame = time.monotonic() + 0.5

    def _store_damaged(self, err: BaseException) -> bool:
        """Whether ``err`` is the template store found damaged; if so, stop (said once)."""
        what = damage(err)
        if what is None:
            return False
        if not self._exit:
            self._exit = EXIT_STORE_DAMAGED
            path = self.store.path
            logger.error("store damaged, stopping: %s", damaged(path, what))
            self.reporter.error({"event": "store_damaged", "path": str(path), "error": what})
            self._stop.set()
        return True

    def _store_unwritable(self, err: BaseException) -> str | None:
        """The reply to give when ``err`` is the store unwritable for now (a full disk, its
        lock held by another process): one ERROR line and event per episode, not per command or
        capture; None for any other error."""
        hit = unwritable(err)
        if hit is None:
            return None
        kind, what = hit
        path = self.store.path
        if self._unwritable.refused_now(kind):
            wrong, todo = problem(kind, path)
            logger.error(
                "store unwritable kind=%s path=%s: %s — %s; decisions go on; enrollments, "
                "revokes and rekeys are refused until you %s",
                kind, path, what, wrong, todo,
            )  # fmt: skip
            self.reporter.error(
                {"event": "store_unwritable", "kind": kind, "path": str(path), "error": what}
            )
        else:
            logger.debug("store still unwritable kind=%s path=%s: %s", kind, path, what)
        return refusal(kind, path)

    def _store_written(self) -> None:
        """A write to the store succeeded: an episode of it unwritable is over."""
        ended = self._unwritable.written()
        if ended is not None:
            logger.info("store writable again kind=%s path=%s", ended[0], self.store.path)

    def trigger(self) -> None:
        """Queue one capture (a GPIO button press); returns at once. A press within
        trigger.debounce of the last one is its contacts bouncing, and is dropped."""
        if not self._presses.accept():
            logger.debug("press ignored: within trigger.debounce=%gs", self._presses.interval)
            return
        self._jobs.put(lambda: self._guarded(lambda: self._capture_and_decide(True)))

    def _presence(self) -> bool:
        return self.cfg.trigger.kind == "presence"

    def _per_capture(self, mode: str) -> tuple[str, ...]:
        """The modalities a capture hashes in ``mode``: the engine gives each model its share
        of the inference threads from them."""
        return tuple(m for m in MODE_MODALITIES[mode] if m in self.source.modalities)

    def _cannot_serve(self, engine: Engine, mode: str) -> str | None:
        """Why ``engine`` cannot decide in ``mode`` from this camera's frames, or None.

        A bundle exported from a print-only data set has no vein model: in a mode that needs
        vein codes every capture was dropped (or answered ``error``) without a word of why."""
        has = engine.modalities
        lacks = mode_lacks(mode, has)
        if lacks:
            return (
                f"mode {mode} needs {' and '.join(lacks)} models, which the bundle does not "
                f"have (it has {', '.join(has) or 'none'})"
            )
        if not any(m in has for m in self._per_capture(mode)):
            return (
                f"mode {mode} needs a model for the camera's {' or '.join(self.source.modalities)}"
                f" frames, and the bundle has {', '.join(has) or 'none'}"
            )
        return None

    # -- commands (called on the transport's thread; run on the main loop) ------------------
    def _on_main(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the main loop and return what it returns (see :meth:`MainJobs.call`),
        waiting ``command_wait_s`` for the loop to take it up, or ``timeout``."""
        return self._jobs.call(fn, self.command_wait_s if timeout is None else timeout)

    def _run_jobs(self, timeout: float) -> None:
        self._jobs.run(timeout, self._job_failed)

    def _job_failed(self, e: Exception) -> Exception:
        if self._store_damaged(e):  # its sender is told, with no traceback
            return CommandError(f"the template store is damaged; the daemon stops: {e}")
        said = self._store_unwritable(e)
        if said is not None and not isinstance(e, CommandError):
            return CommandError(said)
        return e

    # -- reporting --------------------------------------------------------------------------
    def _status(self) -> str:
        s = self.settings
        kind = "1:N" if s.identify else f"1:1 subject={s.subject}"
        return f"mode={s.mode} {kind} model={self.engine.model_hash[:12]}"

    def stats(self) -> dict[str, Any]:
        up = time.monotonic() - self._started
        latency = {k: round(sum(v) / len(v), 2) for k, v in self._stage_ms.items() if v}
        self._stage_ms.clear()
        return {
            "device": self.cfg.device.id,
            "uptime_s": round(up, 1),
            "decisions": dict(self._decisions),
            "rejected": dict(self._rejected),
            "frames": self._frames,
            "fps": round(self._frames / up, 2) if up > 0 else 0.0,
            "latency_ms": latency,
            "gallery_size": len(self.store.list()),
            "camera": self.source.state,
            "mode": self.settings.mode,
            "identify": self.settings.identify,
            "model_hash": self.engine.model_hash,
            **self.reporter.counters(),
        }
