"""Raspberry Pi camera through picamera2: a thin adapter over its documented API.

Still configuration whose ``controls`` carry the frame rate (libcamera's ``FrameDurationLimits``,
both ends at 1 / fps: picamera2's still configuration otherwise lets a frame last up to 1000 s)
and the exposure and gain set so far (a reopened camera keeps the last light's), so that they
hold from the first frame; fixed exposure and gain per modality through ``set_controls`` (auto
exposure would undo the contrast the NIR light gives the veins). libcamera applies a control a
few frames after it was set, so after a switch the frames whose metadata does not yet show the
new ``ExposureTime`` / ``AnalogueGain`` are dropped (at most
:data:`agent.config.CONTROL_SETTLE_FRAMES`).
``capture_request`` for frames: the array and the request's ``SensorTimestamp`` (when the sensor
sent the frame, in ns on the clock ``time.monotonic`` reads), so that a decision's latency
starts at the frame itself, also when picamera2 hands over one that waited in its buffers.
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
from agent.config import CONTROL_SETTLE_FRAMES

logger = logging.getLogger(__name__)

FORMATS = ("YUV420", "RGB888", "BGR888")
# a sensor timestamp further back than this, or ahead of now, is on another clock (a suspend
# between boot and now, a driver without it): the frame is then timed when it arrived
MAX_FRAME_AGE_S = 5.0
# the sensor rounds exposure to whole lines and gain to its gain codes: within this is applied
SETTLE_TOLERANCE = 0.05


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
        fps: float | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"picamera2 format {fmt!r} not supported; use one of {FORMATS}")
        self.camera_num, self.size, self.fmt = camera_num, tuple(size), fmt
        self.controls = dict(controls or {})
        # a frame lasts exactly 1 / fps: the sensor neither speeds up nor slows down with light
        self.frame_us = round(1e6 / fps) if fps else None
        self._expect: dict[str, float] = {}  # set controls the next frame's metadata must show
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
            controls = dict(self.controls)
            if self.frame_us is not None:
                controls["FrameDurationLimits"] = (self.frame_us, self.frame_us)
            config = cam.create_still_configuration(
                main={"size": self.size, "format": self.fmt}, controls=controls
            )
            cam.configure(config)
            cam.start()
        except CaptureError:
            raise
        except Exception as e:  # the driver raises RuntimeError, OSError, IndexError...
            raise CaptureError(f"{self.name}: could not start the camera: {e}") from e
        self._cam, self._count, self._expect = cam, 0, {}
        logger.info(
            "capture opened source=%s size=%s format=%s frame_us=%s controls=%s",
            self.name, self.size, self.fmt, self.frame_us, self.controls,
        )  # fmt: skip

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Switch exposure/gain (e.g. between print and vein); kept for the next open too. The
        next read hands over the first frame taken with them."""
        self.controls.update(controls)
        if self._cam is not None:
            try:
                self._cam.set_controls(controls)
            except Exception as e:
                raise CaptureError(f"{self.name}: set_controls failed: {e}") from e
            self._expect = {
                k: self._reachable(k, v) for k, v in controls.items() if k in _SEEN_IN_METADATA
            }

    def _reachable(self, name: str, value: float) -> float:
        """What the sensor will report for ``value``: libcamera clamps a control to the range
        the camera advertises (an IMX708's analogue gain starts at 1.12, not 1.0), and an
        exposure to the frame (config_sections.py warns of that)."""
        low, high, _ = getattr(self._cam, "camera_controls", {}).get(name, (None, None, None))
        if name == "ExposureTime" and self.frame_us is not None:
            high = self.frame_us if high is None else min(high, self.frame_us)
        if low is not None:
            value = max(value, low)
        return value if high is None else min(value, high)

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
        expect, self._expect = self._expect, {}
        try:
            array, sensor_ns = self._calls.call(lambda: self._capture(cam, expect), timeout)
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

    def _capture(self, cam: Any, expect: dict[str, float]) -> tuple[np.ndarray, int | None]:
        """The main stream's array (a copy: the buffer goes back to the camera) and the sensor
        timestamp of the first completed request whose metadata shows ``expect``."""
        dropped = 0
        while True:
            request = cam.capture_request()
            try:
                metadata = request.get_metadata()
                applied = _applied(metadata, expect)
                if applied or dropped == CONTROL_SETTLE_FRAMES:
                    if not applied:
                        logger.warning(
                            "capture controls_not_applied source=%s wanted=%s got=%s frames=%d",
                            self.name, expect, {k: metadata.get(k) for k in expect}, dropped + 1,
                        )  # fmt: skip
                    return request.make_array("main"), metadata.get("SensorTimestamp")
            finally:
                request.release()
            dropped += 1


# the controls whose applied value a request's metadata reports
_SEEN_IN_METADATA = ("ExposureTime", "AnalogueGain")


def _applied(metadata: dict[str, Any], expect: dict[str, float]) -> bool:
    """Whether a frame was taken with ``expect``; a value the metadata lacks cannot be told."""
    return all(
        k not in metadata or abs(metadata[k] - v) <= SETTLE_TOLERANCE * v for k, v in expect.items()
    )


def _frame_time(sensor_ns: int | None) -> float:
    now = time.monotonic()
    if sensor_ns is None:
        return now
    taken = sensor_ns / 1e9
    return taken if now - MAX_FRAME_AGE_S <= taken <= now else now
