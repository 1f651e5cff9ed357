"""Replay: a folder of images or a video file, played once or looped, optionally at a rate.

Tests and demos run the whole daemon on replayed captures; the rate makes a replay behave like
a camera (frames arrive over time, the loop can fall behind) rather than as fast as disk allows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from agent.capture.base import CaptureError, EndOfStream, Frame, GrabTimeout, Source, to_grey

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")


class ReplaySource(Source):
    def __init__(
        self,
        path: str | Path,
        loop: bool = False,
        fps: float | None = None,
        grey: bool = True,
    ) -> None:
        self.path = Path(path)
        self.loop = loop
        self.period = 1.0 / fps if fps else 0.0
        self.grey = grey
        self.name = f"replay:{self.path.name}"
        self._files: list[Path] | None = None
        self._video: cv2.VideoCapture | None = None
        self._pos = 0
        self._count = 0
        self._next_due = 0.0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CaptureError(
                    f"{self.path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                )
            self._files = files
        elif self.path.is_file():
            self._video = cv2.VideoCapture(str(self.path))
            if not self._video.isOpened():
                raise CaptureError(f"{self.path}: OpenCV cannot open this video file")
        else:
            raise CaptureError(f"{self.path}: no such folder or video file")
        self._pos, self._count, self._next_due, self._open = 0, 0, time.monotonic(), True
        logger.info("capture opened source=%s loop=%s", self.name, self.loop)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
        self._video, self._files, self._open = None, None, False

    def _next_image(self) -> tuple[np.ndarray, dict]:
        if self._files is not None:
            if self._pos >= len(self._files):
                if not self.loop:
                    raise EndOfStream(f"{self.name}: all {len(self._files)} images played")
                self._pos = 0
            path = self._files[self._pos]
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise CaptureError(f"{path}: not a readable image")
            self._pos += 1
            return image, {"path": str(path)}
        assert self._video is not None
        ok, image = self._video.read()
        if not ok and self.loop and self._pos > 0:
            self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._pos = 0
            ok, image = self._video.read()
        if not ok:
            raise EndOfStream(f"{self.name}: video ended after {self._pos} frames")
        self._pos += 1
        return image, {"path": str(self.path), "video_frame": self._pos - 1}

    def read(self, timeout: float = 1.0) -> Frame:
        if not self._open:
            raise CaptureError(f"{self.name}: read before open")
        wait = self._next_due - time.monotonic()
        if wait > timeout:
            time.sleep(max(timeout, 0.0))
            raise GrabTimeout(f"{self.name}: next frame due in {wait:.3f} s > timeout {timeout} s")
        if wait > 0:
            time.sleep(wait)
        image, meta = self._next_image()
        taken = time.monotonic()
        self._next_due = max(self._next_due + self.period, taken) if self.period else taken
        frame = Frame(to_grey(image) if self.grey else image, taken, self._count, self.name, meta)
        self._count += 1
        return frame
