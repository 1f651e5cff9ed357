"""The daemon: wires capture -> vision -> decide -> reporter, commands, stats and sd_notify.

It holds no stage logic. One thread (the main loop) owns the camera, the models and the template
store; commands arriving on the transport's thread are queued to it and their replies awaited,
so no stage needs to be thread-safe. The loop pings the systemd watchdog itself, so a hung stage
stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import numpy as np

from agent import clock
from agent.capture.camera import Capture, FrameLost
from agent.commands import CommandError, Dispatcher, DuplicateError, ReloadRefused
from agent.config import Config, mode_lacks
from agent.debounce import Debounce
from agent.decide import MODE_MODALITIES, NOBODY, Agreement, Probe, Settings
from agent.enroll import DuplicatePalm, EnrollError, enroll
from agent.match import Matcher
from agent.notify import Notifier
from agent.reporter import Reporter
from agent.store_damage import EXIT_STORE_DAMAGED, damage, remedy

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


class Daemon:
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
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        # set once the stopping loop has answered the queued commands: a later one is answered
        # at once (the lock orders the two; no signal handler takes it)
        self._jobs_closed = False
        self._jobs_lock = threading.Lock()
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
        self._fail_pending_jobs()
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
            if self._store_damaged(e):
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
            logger.error("store damaged, stopping: %s: %s — %s", path, what, remedy(path))
            self.reporter.error({"event": "store_damaged", "path": str(path), "error": what})
            self._stop.set()
        return True

    def trigger(self) -> None:
        """Queue one capture (a GPIO button press); returns at once. A press within
        trigger.debounce of the last one is its contacts bouncing, and is dropped."""
        if not self._presses.accept():
            logger.debug("press ignored: within trigger.debounce=%gs", self._presses.interval)
            return
        self._jobs.put((lambda: self._guarded(lambda: self._capture_and_decide(True)), Future()))

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

    # -- the pipeline -----------------------------------------------------------------------
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

    # -- commands (called on the transport's thread; run on the main loop) ------------------
    def _on_main(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the main loop and return what it returns.

        A command the loop does not take up in time (it is busy with an enrollment, a reload)
        is withdrawn, so that a caller told it failed never sees it happen later; one already
        running goes on, and the caller is told so.
        """
        wait = self.command_wait_s if timeout is None else timeout
        fut: Future = Future()
        with self._jobs_lock:
            if self._jobs_closed:
                # nobody would take it up: its sender waited 30 s, and the MQTT client was gone
                # by then, so no reply ever came
                raise CommandError("the daemon is stopping; nothing was done")
            self._jobs.put((fn, fut))
        try:
            return fut.result(timeout=wait)
        except FutureTimeout:
            if fut.cancel():
                raise CommandError(
                    f"the daemon was busy for {wait:g} s (an enrollment, a reload); "
                    "nothing was done: send the command again"
                ) from None
            raise CommandError(
                f"still running after {wait:g} s; it goes on, and its outcome is in the "
                "daemon's log"
            ) from None

    def _run_jobs(self, timeout: float) -> None:
        try:
            fn, fut = self._jobs.get(timeout=timeout) if timeout else self._jobs.get_nowait()
        except queue.Empty:
            return
        while True:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    if self._store_damaged(e):  # its sender is told, with no traceback
                        e = CommandError(f"the template store is damaged; the daemon stops: {e}")
                    fut.set_exception(e)
            try:
                fn, fut = self._jobs.get_nowait()
            except queue.Empty:
                return

    def _fail_pending_jobs(self) -> None:
        with self._jobs_lock:
            self._jobs_closed = True
        while True:
            try:
                _, fut = self._jobs.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(CommandError("the daemon is stopping"))

    def enroll(
        self, subject: str, captures: int | None, allow_duplicate: bool = False
    ) -> dict[str, Any]:
        e = self.cfg.enroll
        return self._on_main(
            lambda: self.enroll_now(subject, captures, allow_duplicate), timeout=e.timeout + 30
        )

    def enroll_now(
        self, subject: str, captures: int | None = None, allow_duplicate: bool = False
    ) -> dict[str, Any]:
        """Enroll on the calling thread (the CLI, or the main loop for a command)."""
        if any(s["label"] == subject for s in self.store.list()):
            # before the captures: the store refused it only after the person had held still
            raise CommandError(f"subject {subject!r} is already enrolled; revoke it first")
        e = self.cfg.enroll
        wanted = MODE_MODALITIES[self.settings.mode]
        have = set(self.engine.modalities) & set(self.source.modalities)
        modalities = tuple(m for m in wanted if m in have) or wanted

        def grab() -> Probe:
            if self._stop.is_set():
                # SIGTERM: systemd kills the service TimeoutStopSec= (20 s) after it, sooner
                # than an enrollment with nobody at the reader gives up (enroll.timeout, 30 s)
                raise EnrollError(
                    "the daemon is stopping; nothing was enrolled: enroll again once it runs"
                )
            # waits out the cooldown of the decision before: no frame is then the camera's
            probe, _ = self._grab(explicit=True)
            return probe if probe is not None else Probe(rejected="no_frame")

        try:
            return enroll(
                subject, modalities, grab, self.store, captures or e.captures, e.max_spread,
                e.timeout, tick=self._tick, matcher=self.engine.matcher,
                allow_duplicate=allow_duplicate,
            )  # fmt: skip
        except DuplicatePalm as err:
            raise DuplicateError(f"enrollment refused: {err}") from err
        except (EnrollError, ValueError, RuntimeError) as err:
            raise CommandError(f"enrollment failed: {err}") from err

    def _tick(self) -> None:
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog()

    def revoke(self, subject: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            try:
                self.store.revoke(subject)
            except RuntimeError as err:
                raise CommandError(str(err)) from err
            return {"revoked": subject}

        return self._on_main(run)

    def list_subjects(self) -> dict[str, Any]:
        return self._on_main(lambda: {"subjects": [s["label"] for s in self.store.list()]})

    def set_mode(
        self, mode: str | None, identify: bool | None, subject: str | None
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            new = Settings(
                mode or self.settings.mode,
                self.settings.identify if identify is None else identify,
                subject if subject is not None else self.settings.subject,
            )
            if not new.identify and not new.subject:
                raise CommandError("1:1 verification (identify false) needs a subject")
            lacks = mode_lacks(new.mode, self.source.modalities)
            if lacks:
                raise CommandError(
                    f"mode {new.mode} needs {' and '.join(lacks)} frames, which this camera "
                    f"does not give (it gives {', '.join(self.source.modalities)})"
                )
            lacks = self._cannot_serve(self.engine, new.mode)
            if lacks:
                raise CommandError(lacks)
            wanted = self._per_capture(new.mode)
            if not self.engine.suits(wanted):
                # one model per capture instead of two, or the reverse: load the models again
                # with the threads that suit the new mode (res18: 0.04-0.16 s on a 2-core x86)
                self._reload(wanted, new.mode)
            self.settings = new
            self.agreement.reset()
            logger.info("mode changed %s", self._status())
            self.notifier.status(self._status())
            return {"mode": new.mode, "identify": new.identify, "subject": new.subject}

        return self._on_main(run)

    def reload(self) -> dict[str, Any]:
        return self._on_main(self._reload)

    def _reload(
        self, per_capture: tuple[str, ...] | None = None, mode: str | None = None
    ) -> dict[str, Any]:
        """Load the bundle again, for ``mode`` (the current one if None); one that cannot
        decide in it is refused and the running one kept."""
        mode = mode or self.settings.mode
        try:
            fresh = self._load_engine(per_capture or self._per_capture(mode))
        except Exception as err:
            raise ReloadRefused(str(err)) from err
        lacks = self._cannot_serve(fresh, mode)
        if lacks:
            fresh.close()
            raise ReloadRefused(lacks)
        try:
            self.store.check_weights(fresh.weights_sha256, self.cfg.bundle.path, fresh.model_hash)
        except Exception as err:
            fresh.close()
            raise ReloadRefused(str(err)) from err
        old, self.engine = self.engine, fresh
        old.close()
        logger.info("bundle reloaded model_hash=%s", fresh.model_hash)
        return {"model_hash": fresh.model_hash}

    def _reload_on_signal(self) -> None:
        """SIGHUP: nobody awaits a reply, so a refusal is one line in the journal and an event
        on ``error`` (it was a ``pipeline_error`` with a traceback)."""
        try:
            self._reload()
        except ReloadRefused as err:
            kept = self.engine.model_hash
            logger.error(
                "reload refused signal=SIGHUP reason=%s keeping model_hash=%s", err.reason, kept
            )
            self.reporter.error(
                {"event": "reload_refused", "signal": "SIGHUP", "reason": err.reason,
                 "model_hash": kept}
            )  # fmt: skip

    def capture(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            doc = self._capture_and_decide(explicit=True)
            if doc is None:
                return {"decision": None, "pending": "agreement"}
            return {
                "event_id": doc["event_id"],
                "decision": doc["decision"],
                "subject": doc["subject"],
            }

        return self._on_main(run)

    def rekey(self) -> dict[str, Any]:
        return self._on_main(self._rekey)

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
