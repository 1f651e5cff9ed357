"""The one interface every camera or replay source implements.

Sources raise :class:`CaptureError` (or a subclass) for anything that goes wrong, never another
exception type, so the daemon's loop has one thing to catch; :mod:`agent.capture.reopen` turns
those into reports and reopens with back-off.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import numpy as np

T = TypeVar("T")


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


class TimedCalls:
    """Runs a blocking driver call on a worker thread so that a hung camera cannot hang us.

    After a timeout the worker may still be inside the driver, waiting for a frame. The next
    call waits for that same one rather than asking for another behind it, and returns it
    unless it came more than that call's timeout ago: a camera a little slower than the timeout
    (auto exposure in low light) then delivers every frame it takes; asking anew each time
    threw each frame away and timed out for ever. Calls never run beside each other (a driver
    such as OpenCV's ``VideoCapture`` is not safe from two threads); a driver that is stuck
    times every call out, and the caller (the reopen wrapper) closes the device after repeated
    timeouts.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: cf.ThreadPoolExecutor | None = None
        self._late: cf.Future | None = None  # a call that timed out, still in the driver
        self._late_done: float | None = None  # when it came back from the driver

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix=f"grab-{self._name}")
        future, done_at, self._late, self._late_done = self._late, self._late_done, None, None
        if done_at is not None and time.monotonic() - done_at > timeout:
            future = None  # it came too long ago: a new call for a fresh frame
        if future is None:
            future = self._pool.submit(fn)
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

    def shutdown(self) -> None:
        self._late, self._late_done = None, None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


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
