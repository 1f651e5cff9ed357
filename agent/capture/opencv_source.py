"""OpenCV VideoCapture: a V4L2/USB device index, a file or URL, or a GStreamer pipeline string.

On a Jetson the CSI camera is reached through a GStreamer pipeline (nvarguscamerasrc ... !
appsink); OpenCV is told to use its GStreamer backend whenever the string contains ' ! '.
"""

from __future__ import annotations

import logging
import time

import cv2

from agent.capture.base import CaptureError, EndOfStream, Frame, Source, TimedCalls, to_grey

logger = logging.getLogger(__name__)

_APIS = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER}


class OpenCVSource(Source):
    def __init__(
        self,
        device: int | str,
        api: str | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        grey: bool = True,
    ) -> None:
        self.device = device
        if api is None:
            api = "gstreamer" if isinstance(device, str) and " ! " in device else "any"
        if api not in _APIS:
            raise ValueError(f"capture api {api!r} unknown; use one of {sorted(_APIS)}")
        self.api = api
        self.width, self.height, self.fps = width, height, fps
        self.grey = grey
        self.name = f"opencv:{device}" if not isinstance(device, str) else f"opencv:{device[:40]}"
        self._cap: cv2.VideoCapture | None = None
        self._calls = TimedCalls(self.name)
        self._count = 0
        # a file or image sequence ends; a device (an index or a /dev node: a USB camera
        # unplugged), a URL or a pipeline that stops has failed, and is reopened
        self.ends = isinstance(device, str) and not (
            " ! " in device or "://" in device or device.startswith("/dev/")
        )

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.device, _APIS[self.api])
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"{self.name}: OpenCV could not open it (api={self.api}); check the device "
                "exists, is not used by another process, and that OpenCV has this backend"
            )
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
            (cv2.CAP_PROP_FPS, self.fps),
        ):
            if value:
                cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued seconds ago
        self._cap, self._count = cap, 0
        logger.info("capture opened source=%s api=%s", self.name, self.api)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            self._calls.close(cap.release)

    def read(self, timeout: float = 1.0) -> Frame:
        cap = self._cap
        if cap is None:
            raise CaptureError(f"{self.name}: read before open")
        try:
            # timed when it arrives: a frame late for one read is handed to the next
            ok, image, taken = self._calls.call(lambda: (*cap.read(), time.monotonic()), timeout)
        except cv2.error as e:
            raise CaptureError(f"{self.name}: {e}") from e
        if not ok or image is None:
            if self.ends and self._count > 0:
                raise EndOfStream(f"{self.name}: no more frames after {self._count}")
            raise CaptureError(f"{self.name}: grab failed (device gone or stream ended)")
        frame = Frame(to_grey(image) if self.grey else image, taken, self._count, self.name)
        self._count += 1
        return frame
