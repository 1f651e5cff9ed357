"""The one interface every camera or replay source implements.

Sources raise :class:`CaptureError` (or a subclass) for anything that goes wrong, never another
exception type, so the daemon's loop has one thing to catch; :mod:`agent.capture.reopen` turns
those into reports and reopens with back-off.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import numpy as np

T = TypeVar("T")

logger = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """The source failed; reopening may help."""


class GrabTimeout(CaptureError):
    """No frame arrived within the timeout."""


class EndOfStream(CaptureError):
    """A replay played once has no more frames: not a failure, nothing to reopen."""


@dataclass
class Frame:
    image: np.ndarray  # uint8 (H, W) grey, or (H, W, 3) BGR when the source keeps colour
    timestamp: float  # time.monotonic() when the frame was taken
    index: int  # frames read from this source since it was opened
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """open() / read(timeout) / close(); read raises CaptureError, GrabTimeout, EndOfStream."""

    name: str = "source"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self, timeout: float = 1.0) -> Frame: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# how long closing a source waits for a call still inside the driver before it leaves the
# release to the worker that makes the call
CLOSE_WAIT_S = 2.0


class _Worker:
    """One daemon thread running driver calls in the order given.

    A daemon thread, unlike an executor's, is not joined when the interpreter exits: a call
    that never comes back from the driver held the stopping daemon until systemd killed it.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[cf.Future, Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name=f"grab-{name}", daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> cf.Future:
        future: cf.Future = cf.Future()
        self._jobs.put((future, fn))
        return future

    def stop(self) -> None:
        """End the thread once the calls already given have run."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to whoever waits on the future
                future.set_exception(e)


class TimedCalls:
    """Runs a blocking driver call on a worker thread so that a hung camera cannot hang us.

    After a timeout the worker may still be inside the driver, waiting for a frame. The next
    call waits for that same one rather than asking for another behind it, and returns it
    unless it came more than that call's timeout ago: a camera a little slower than the timeout
    (auto exposure in low light) then delivers every frame it takes; asking anew each time
    threw each frame away and timed out for ever. Calls never run beside each other (a driver
    such as OpenCV's ``VideoCapture`` is not safe from two threads); a driver that is stuck
    times every call out, and the caller (the reopen wrapper) closes the device after repeated
    timeouts: :meth:`close` releases it only once no call is inside the driver.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._worker: _Worker | None = None
        self._late: cf.Future | None = None  # a call that timed out, still in the driver
        self._late_done: float | None = None  # when it came back from the driver

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        if self._worker is None:
            self._worker = _Worker(self._name)
        future, done_at, self._late, self._late_done = self._late, self._late_done, None, None
        if done_at is not None and time.monotonic() - done_at > timeout:
            future = None  # it came too long ago: a new call for a fresh frame
        if future is None:
            future = self._worker.submit(fn)
        try:
            return future.result(timeout=timeout)
        except cf.TimeoutError:
            if not future.cancel():  # in the driver: the next call takes what it returns
                self._late = future
                future.add_done_callback(self._finished)
            raise GrabTimeout(f"{self._name}: no frame within {timeout:.3f} s") from None

    def _finished(self, future: cf.Future) -> None:
        if future is self._late:
            self._late_done = time.monotonic()

    def close(self, release: Callable[[], None]) -> None:
        """Run ``release`` (the driver's own close) once no call is inside the driver.

        Releasing an OpenCV capture that a timed-out read is still inside freed what that read
        goes on using: the process crashed when the read came back. The release therefore runs
        on the worker, after the calls given to it; this waits for it up to ``CLOSE_WAIT_S``
        and otherwise leaves it to the worker, so that a stopping daemon or a reopen goes on
        (with a new worker) while the stuck call holds only the old device.
        """
        worker, self._worker, self._late, self._late_done = self._worker, None, None, None
        if worker is None:  # no call was ever made: nothing can be inside the driver
            release()
            return
        done = worker.submit(release)
        worker.stop()
        try:
            done.result(timeout=CLOSE_WAIT_S)
        except cf.TimeoutError:
            logger.warning(
                "capture release_deferred source=%s waited_s=%.1f: a read is still inside the "
                "driver; the device is released when it returns",
                self._name,
                CLOSE_WAIT_S,
            )
            done.add_done_callback(self._released_late)

    def _released_late(self, done: cf.Future) -> None:
        error = done.exception()
        if error is not None:
            logger.warning("capture close_failed source=%s error=%s", self._name, error)
        else:
            logger.info("capture released_late source=%s", self._name)


def to_u8(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; 16-bit (a NIR capture saved at full depth) to its high byte, as
    ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` reads such a file: the ROI search and the
    quality thresholds work on 0-255."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise CaptureError(
        f"frames of type {image.dtype} are not supported; save them as 8- or 16-bit images"
    )


def to_grey(image: np.ndarray, order: str = "bgr") -> np.ndarray:
    """uint8 or uint16 colour or grey -> uint8 (H, W); the NIR pipeline works on one band."""
    image = to_u8(image)
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    code = cv2.COLOR_BGR2GRAY if order == "bgr" else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), code)
