"""What each remote command does to the running daemon, and the reload a SIGHUP asks for.

:mod:`agent.commands` parses and validates a request and calls one of these methods on the
MQTT transport's thread; each hands its work to the main loop (which owns the camera, the models
and the template store) and waits for the outcome there. ``palm-agent enroll`` calls
:meth:`DaemonCommands.enroll_now` on its own thread, with no loop running.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.commands import CommandError, DuplicateError, ReloadRefused
from agent.config import Config, mode_lacks
from agent.decide import MODE_MODALITIES, Agreement, Probe, Settings
from agent.enroll import DuplicatePalm, EnrollError, enroll
from agent.notify import Notifier
from agent.reporter import Reporter
from agent.store_unwritable import refusal, unwritable

if TYPE_CHECKING:
    from agent.daemon import Engine, Source

# the daemon's own lines: a journal filtered on its logger name goes on finding them
logger = logging.getLogger("agent.daemon")


class DaemonCommands:
    """The :class:`agent.commands.CommandContext` of :class:`agent.daemon.Daemon`, whose state
    (declared here) it acts on."""

    cfg: Config
    reporter: Reporter
    source: Source
    store: Any
    engine: Engine
    notifier: Notifier
    settings: Settings
    agreement: Agreement
    _stop: threading.Event
    _load_engine: Callable[[tuple[str, ...]], Engine]
    _rekey: Callable[[], dict[str, Any]]

    # provided by the daemon and its pipeline
    _on_main: Callable[..., Any]
    _grab: Callable[..., tuple[Probe | None, float]]
    _tick: Callable[[], None]
    _capture_and_decide: Callable[..., dict[str, Any] | None]
    _per_capture: Callable[[str], tuple[str, ...]]
    _cannot_serve: Callable[[Engine, str], str | None]
    _status: Callable[[], str]
    _store_written: Callable[[], None]

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
            done = enroll(
                subject, modalities, grab, self.store, captures or e.captures, e.max_spread,
                e.timeout, tick=self._tick, matcher=self.engine.matcher,
                allow_duplicate=allow_duplicate,
            )  # fmt: skip
        except DuplicatePalm as err:
            raise DuplicateError(f"enrollment refused: {err}") from err
        except (EnrollError, ValueError, RuntimeError) as err:
            raise CommandError(f"enrollment failed: {err}") from err
        except sqlite3.OperationalError as err:
            hit = unwritable(err)
            if hit is None:
                raise
            # ``palm-agent enroll`` too: one line, not a traceback
            raise CommandError(f"enrollment failed: {refusal(hit[0], self.store.path)}") from err
        self._store_written()
        return done

    def revoke(self, subject: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            try:
                self.store.revoke(subject)
            except RuntimeError as err:
                raise CommandError(str(err)) from err
            self._store_written()
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
        def run() -> dict[str, Any]:
            done = self._rekey()
            self._store_written()
            return done

        return self._on_main(run)
