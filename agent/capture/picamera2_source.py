"""Raspberry Pi camera through picamera2: a thin adapter over its documented API.

Still configuration, fixed exposure and gain per modality through ``set_controls`` (auto
exposure would undo the contrast the NIR light gives the veins), ``capture_request`` for frames:
the array and the request's ``SensorTimestamp`` (when the sensor sent the frame, in ns on the
clock ``time.monotonic`` reads), so that a decision's latency starts at the frame itself, also
when picamera2 hands over one that waited in its buffers.
picamera2 is imported only when a camera is opened, so this file loads anywhere; tests pass a
factory that builds a stand-in with the same methods.

Formats and the arrays picamera2 returns for them: ``RGB888`` (H, W, 3) with bytes in B, G, R
order; ``BGR888`` (H, W, 3) in R, G, B order; ``YUV420`` (H * 3 / 2, stride), the first H rows
being the luminance, which is all a grey NIR pipeline needs; the stride is W rounded up to the
ISP's alignment (64 bytes on a Pi), so a width such as 720 or 800 comes with padding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.capture.base import CaptureError, Frame, Source, TimedCalls, to_grey

logger = logging.getLogger(__name__)

FORMATS = ("YUV420", "RGB888", "BGR888")
# a sensor timestamp further back than this, or ahead of now, is on another clock (a suspend
# between boot and now, a driver without it): the frame is then timed when it arrived
MAX_FRAME_AGE_S = 5.0


def _default_factory(camera_num: int) -> Any:
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        raise CaptureError(
            "picamera2 is not installed: on Raspberry Pi OS `sudo apt install python3-picamera2` "
            "(and create the venv with --system-site-packages), or use an opencv source"
        ) from e
    return Picamera2(camera_num)


class Picamera2Source(Source):
    def __init__(
        self,
        camera_num: int = 0,
        size: tuple[int, int] = (640, 480),
        fmt: str = "YUV420",
        controls: dict[str, Any] | None = None,
        factory: Callable[[int], Any] | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"picamera2 format {fmt!r} not supported; use one of {FORMATS}")
        self.camera_num, self.size, self.fmt = camera_num, tuple(size), fmt
        self.controls = dict(controls or {})
        self._factory = factory or _default_factory
        self.name = f"picamera2:{camera_num}"
        self._cam: Any = None
        self._calls = TimedCalls(self.name)
        self._count = 0

    @property
    def is_open(self) -> bool:
        return self._cam is not None

    def open(self) -> None:
        try:
            cam = self._factory(self.camera_num)
            config = cam.create_still_configuration(main={"size": self.size, "format": self.fmt})
            cam.configure(config)
            if self.controls:
                cam.set_controls(self.controls)
            cam.start()
        except CaptureError:
            raise
        except Exception as e:  # the driver raises RuntimeError, OSError, IndexError...
            raise CaptureError(f"{self.name}: could not start the camera: {e}") from e
        self._cam, self._count = cam, 0
        logger.info("capture opened source=%s size=%s format=%s", self.name, self.size, self.fmt)

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Switch exposure/gain (e.g. between print and vein); kept for the next open too."""
        self.controls.update(controls)
        if self._cam is not None:
            try:
                self._cam.set_controls(controls)
            except Exception as e:
                raise CaptureError(f"{self.name}: set_controls failed: {e}") from e

    def close(self) -> None:
        """Stop and close the camera once no ``capture_request`` is waiting on it: picamera2
        runs ``stop`` on its event loop behind the pending capture, so stopping a camera that
        sends no frame waited for ever."""
        cam, self._cam = self._cam, None
        if cam is not None:
            self._calls.close(lambda: self._release(cam))

    def _release(self, cam: Any) -> None:
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as e:  # closing a vanished camera must not raise
                logger.warning("capture close_failed source=%s error=%s", self.name, e)

    def read(self, timeout: float = 1.0) -> Frame:
        cam = self._cam
        if cam is None:
            raise CaptureError(f"{self.name}: read before open")
        try:
            array, sensor_ns = self._calls.call(lambda: _capture(cam), timeout)
        except CaptureError:
            raise
        except Exception as e:
            raise CaptureError(f"{self.name}: capture_request failed: {e}") from e
        image = self._grey(np.asarray(array))
        frame = Frame(image, _frame_time(sensor_ns), self._count, self.name)
        self._count += 1
        return frame

    def _grey(self, array: np.ndarray) -> np.ndarray:
        w, h = self.size
        if self.fmt == "YUV420":
            # (h * 3 / 2, stride): rows keep their padding (a Pi aligns them to 64 bytes)
            if array.ndim != 2 or array.shape[0] != h * 3 // 2 or array.shape[1] < w:
                raise CaptureError(
                    f"{self.name}: YUV420 frame of shape {array.shape}, not {w}x{h}; the "
                    "camera may not support this size: try camera.width/height 640x480"
                )
            return array[:h, :w]
        if array.shape[:2] != (h, w):
            raise CaptureError(f"{self.name}: {self.fmt} frame of shape {array.shape}")
        return to_grey(array, "bgr" if self.fmt == "RGB888" else "rgb")


def _capture(cam: Any) -> tuple[np.ndarray, int | None]:
    """The main stream's array (a copy: the buffer goes back to the camera) and the sensor
    timestamp of one completed request."""
    request = cam.capture_request()
    try:
        return request.make_array("main"), request.get_metadata().get("SensorTimestamp")
    finally:
        request.release()


def _frame_time(sensor_ns: int | None) -> float:
    now = time.monotonic()
    if sensor_ns is None:
        return now
    taken = sensor_ns / 1e9
    return taken if now - MAX_FRAME_AGE_S <= taken <= now else now
