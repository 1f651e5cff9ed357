"""Work handed to the daemon's main loop from other threads, and the answers handed back.

The main loop owns the camera, the models and the template store, so no stage needs to be
thread-safe; a command arrives on the MQTT transport's thread and a button press on the pin
factory's, and each is queued here for the loop to run between two captures. The caller of
:meth:`MainJobs.call` waits for the outcome, within a limit: a command the loop does not take
up in time is withdrawn, so a caller told it failed never sees it happen later.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from agent.commands import CommandError


class MainJobs:
    """The queue between the threads that ask and the main loop that runs."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        # set once the stopping loop has answered the queued commands: a later one is answered
        # at once (the lock orders the two; no signal handler takes it)
        self._closed = False
        self._lock = threading.Lock()

    def put(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` for the loop and return at once; nobody awaits its outcome."""
        self.queue.put((fn, Future()))

    def call(self, fn: Callable[[], Any], wait: float) -> Any:
        """Run ``fn`` on the main loop and return what it returns.

        A command the loop does not take up within ``wait`` seconds (it is busy with an
        enrollment, a reload) is withdrawn, so that a caller told it failed never sees it happen
        later; one already running goes on, and the caller is told so.
        """
        fut: Future = Future()
        with self._lock:
            if self._closed:
                # nobody would take it up: its sender waited 30 s, and the MQTT client was gone
                # by then, so no reply ever came
                raise CommandError("the daemon is stopping; nothing was done")
            self.queue.put((fn, fut))
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

    def run(self, timeout: float, failed: Callable[[Exception], Exception]) -> None:
        """On the main loop: run what is queued, waiting up to ``timeout`` s for the first.
        ``failed`` turns a job's exception into the one its caller is given."""
        try:
            fn, fut = self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(failed(e))
            try:
                fn, fut = self.queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """The loop has ended: answer what is queued, and every later call, at once."""
        with self._lock:
            self._closed = True
        while True:
            try:
                _, fut = self.queue.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(CommandError("the daemon is stopping"))
