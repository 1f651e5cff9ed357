"""Ctrl-C and SIGTERM held back until the training step under way is whole.

An interrupt raised inside a step (after the forward pass moved the batch norm statistics, or
after the optimiser's update but before the step was counted) left weights that belong to no
step count, and the checkpoint written at the interrupt could not say which of the epoch's
samples they have seen. A signal that comes during a step is delivered when the step ends; one
that comes while the loader waits for a batch is delivered at once: nothing is half done then,
and the loader's workers, stopped by the same Ctrl-C at a terminal, would leave it waiting.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

Handler = Callable[[int, FrameType | None], object]


class WholeSteps:
    """Between :meth:`install` and :meth:`restore`, ``with guard.step():`` runs a step that an
    interrupt does not cut. Only signals with a Python handler are held (Ctrl-C's
    KeyboardInterrupt, the training command's SIGTERM): an ignored one stays ignored."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self._signals = signals
        self._saved: dict[int, Handler] = {}
        self._held: tuple[int, FrameType | None] | None = None
        self._in_step = False

    def install(self) -> WholeSteps:
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            for signum in self._signals:
                handler = signal.getsignal(signum)
                if callable(handler):
                    self._saved[signum] = handler
                    signal.signal(signum, self._receive)
        return self

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
        self._held = None

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        # a second signal during one step is delivered at once: a step that hangs (a stuck
        # collective, a device that stopped answering) can still be interrupted
        if self._in_step and self._held is None:
            self._held = (signum, frame)
        else:
            self._saved[signum](signum, frame)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False
        held, self._held = self._held, None
        if held is not None:
            self._saved[held[0]](*held)
