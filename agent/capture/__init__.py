"""Capture: one :class:`Source` interface over picamera2, OpenCV and replay.

``open_source`` builds a source from its config mapping (``kind`` plus that kind's arguments);
the daemon wraps it in :class:`Reopening` so that a camera that fails is reported and retried.
"""

from __future__ import annotations

from typing import Any

from agent.capture.base import CaptureError, EndOfStream, Frame, GrabTimeout, Source
from agent.capture.reopen import Reopening, SourceUnavailable

KINDS = ("replay", "opencv", "picamera2")

__all__ = [
    "KINDS",
    "CaptureError",
    "EndOfStream",
    "Frame",
    "GrabTimeout",
    "Reopening",
    "Source",
    "SourceUnavailable",
    "open_source",
]


def open_source(config: dict[str, Any]) -> Source:
    """Build (not open) a source: {"kind": "replay", "path": ..., "loop": true, "fps": 5}, ...

    Keys other than ``kind`` are the constructor's arguments: ReplaySource(path, loop, fps,
    grey), OpenCVSource(device, api, width, height, fps, grey), Picamera2Source(camera_num,
    size, fmt, controls, fps).
    """
    args = dict(config)
    kind = args.pop("kind", None)
    try:
        if kind == "replay":
            from agent.capture.replay import ReplaySource

            return ReplaySource(**args)
        if kind == "opencv":
            from agent.capture.opencv_source import OpenCVSource

            return OpenCVSource(**args)
        if kind == "picamera2":
            from agent.capture.picamera2_source import Picamera2Source

            if "size" in args:
                args["size"] = tuple(args["size"])
            return Picamera2Source(**args)
    except TypeError as e:
        raise ValueError(f"capture source {kind!r}: bad arguments {sorted(args)}: {e}") from e
    raise ValueError(f"capture source kind {kind!r} unknown; use one of {KINDS}")
