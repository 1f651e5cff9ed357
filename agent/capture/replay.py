"""Replay: a folder of images or a video file, played once or looped, optionally at a rate.

Tests and demos run the whole daemon on replayed captures; the rate makes a replay behave like
a camera (frames arrive over time, the loop can fall behind) rather than as fast as disk allows.

A camera hands over raw arrays, so decoding a PNG or a video frame on every grab would bill the
pipeline for work a device never does. Each image is decoded once, on its first grab, and kept
in memory within ``cache_mb``; images beyond that budget are decoded on every grab, as before.
A video is kept only when all of its frames fit; otherwise it is decoded on every pass.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from agent.capture.base import (
    CaptureError,
    EndOfStream,
    Frame,
    GrabTimeout,
    Source,
    to_grey,
    to_u8,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")
DEFAULT_CACHE_MB = 64.0  # ~200 grey 640x480 frames


class ReplaySource(Source):
    """Frames are handed out read-only when they come from memory: they are shared by every
    pass of a loop, so a stage that wrote into one would change the replay."""

    def __init__(
        self,
        path: str | Path,
        loop: bool = False,
        fps: float | None = None,
        grey: bool = True,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        if cache_mb < 0:
            raise ValueError(f"replay cache_mb must be >= 0 (0 decodes every grab), got {cache_mb}")
        self.path = Path(path)
        self.loop = loop
        self.period = 1.0 / fps if fps else 0.0
        self.grey = grey
        self.cache_bytes = int(cache_mb * 2**20)
        self.name = f"replay:{self.path.name}"
        self._files: list[Path] | None = None
        self._video: cv2.VideoCapture | None = None
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._video_frames: int | None = None  # set once the whole video is in memory
        self._video_uncached = False  # the video outgrew the budget: decode every pass
        self._pos = 0
        self._count = 0
        self._next_due = 0.0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def cached_mb(self) -> float:
        """Decoded frames held in memory, in MiB."""
        return self._cached_bytes / 2**20

    def open(self) -> None:
        self._drop_cache()
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
        logger.info(
            "capture opened source=%s loop=%s cache_mb=%s",
            self.name,
            self.loop,
            self.cache_bytes / 2**20,
        )

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
        self._video, self._files, self._open = None, None, False
        self._drop_cache()

    def _drop_cache(self) -> None:
        self._cache, self._cached_bytes = {}, 0
        self._video_frames, self._video_uncached = None, False

    def _keep(self, index: int, raw: np.ndarray) -> np.ndarray:
        """The frame as it is handed out; kept in memory when it fits the budget."""
        image = to_grey(raw) if self.grey else to_u8(raw)
        if self._video_uncached:
            return image
        if self._cached_bytes + image.nbytes <= self.cache_bytes:
            image.flags.writeable = False
            self._cache[index] = image
            self._cached_bytes += image.nbytes
        elif self._video is not None:
            logger.info(
                "replay %s: video larger than cache_mb=%s, decoding every pass",
                self.name,
                self.cache_bytes / 2**20,
            )
            self._cache, self._cached_bytes, self._video_uncached = {}, 0, True
        return image

    def _next_file(self) -> tuple[np.ndarray, dict]:
        assert self._files is not None
        if self._pos >= len(self._files):
            if not self.loop:
                raise EndOfStream(f"{self.name}: all {len(self._files)} images played")
            self._pos = 0
        path = self._files[self._pos]
        image = self._cache.get(self._pos)
        if image is None:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise CaptureError(f"{path}: not a readable image")
            image = self._keep(self._pos, raw)
        self._pos += 1
        return image, {"path": str(path)}

    def _next_video_frame(self) -> tuple[np.ndarray, dict]:
        assert self._video is not None
        if self._video_frames is None:
            ok, raw = self._video.read()
            if not ok and self._pos > 0 and not self._video_uncached:
                self._video_frames = self._pos  # every frame is in memory: play from there
            else:
                if not ok and self.loop and self._pos > 0:
                    self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    self._pos = 0
                    ok, raw = self._video.read()
                if not ok:
                    raise EndOfStream(f"{self.name}: video ended after {self._pos} frames")
                self._pos += 1
                image = self._keep(self._pos - 1, raw)
                return image, {"path": str(self.path), "video_frame": self._pos - 1}
        if self._pos >= self._video_frames:
            if not self.loop:
                raise EndOfStream(f"{self.name}: video ended after {self._pos} frames")
            self._pos = 0
        self._pos += 1
        return self._cache[self._pos - 1], {"path": str(self.path), "video_frame": self._pos - 1}

    def read(self, timeout: float = 1.0) -> Frame:
        if not self._open:
            raise CaptureError(f"{self.name}: read before open")
        wait = self._next_due - time.monotonic()
        if wait > timeout:
            time.sleep(max(timeout, 0.0))
            raise GrabTimeout(f"{self.name}: next frame due in {wait:.3f} s > timeout {timeout} s")
        if wait > 0:
            time.sleep(wait)
        image, meta = self._next_file() if self._files is not None else self._next_video_frame()
        taken = time.monotonic()
        self._next_due = max(self._next_due + self.period, taken) if self.period else taken
        frame = Frame(image, taken, self._count, self.name, meta)
        self._count += 1
        return frame
