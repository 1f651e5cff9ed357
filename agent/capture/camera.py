"""The daemon's frame source: the capture rig a device config describes (switched light, two
cameras, or one), each camera wrapped so that a failure is reported and retried.

Under switched light the second frame of a capture comes a settle delay and two frame times
after the first; a thread takes it while the first goes through the pipeline
(``python bench/switched_light.py --bundle ...`` measures what that saves). Only while a hand is
in front of the reader, though: a capture whose first frame showed no hand never asked for its
second, and the next one takes its second frame only when asked. An idle reader looks under the
light already on, without switching (no LED flicker) and with one frame per look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from agent.config import CameraConfig

logger = logging.getLogger(__name__)


class Capture(NamedTuple):
    """One capture's frames per modality, and when its first frame was taken
    (``time.monotonic()``): a decision's latency runs from there, not from the start of a read
    that waited for the camera's next frame. ``images`` iterates in the order the frames were
    taken; a later one may still be arriving, and reading it waits for it or raises
    :class:`FrameLost`."""

    images: Mapping[str, np.ndarray]
    taken: float


class FrameLost(RuntimeError):
    """A capture's later frame could not be taken (its images can arrive while the first is
    already being processed): the capture is dropped as a failed read would be."""


class Camera:
    """agent.capture's rig (switched light, two cameras, or one) as the daemon's frame source."""

    def __init__(self, cam: CameraConfig, report: Any = None) -> None:
        from agent.capture import Reopening, open_source

        def source(which: str) -> Any:
            vein = which == "vein" and cam.layout == "dual"
            if cam.source == "replay":
                path = cam.vein_replay_path if vein else cam.replay_path
                args: dict[str, Any] = {"path": path, "loop": cam.loop, "fps": cam.fps}
                args["cache_mb"] = cam.replay_cache_mb
            elif cam.source == "opencv":
                dev = (cam.vein_device if vein else cam.device) or cam.device
                device: int | str = int(dev) if dev.isdigit() else dev
                args = {"device": device, "width": cam.width, "height": cam.height, "fps": cam.fps}
            else:
                num = cam.vein_camera_num if vein else cam.camera_num
                args = {"camera_num": num, "size": (cam.width, cam.height), "fmt": cam.format}
                args["fps"] = cam.fps
                if cam.layout != "switched":  # under switched light, set at each switch
                    args["controls"] = lights[which]
            src = open_source({"kind": cam.source, **args})
            return Reopening(src, report, (cam.reopen_min, cam.reopen_max))

        lights = cam.controls.libcamera()
        self.timeout = cam.read_timeout
        self.state = "opening"
        self._ahead: ThreadPoolExecutor | None = None  # takes a capture's later frames
        self._pending: Future | None = None  # the frames a capture is still taking
        self._last: _Arriving | None = None  # the last capture read under switched light
        self.modalities = cam.modalities
        if cam.layout == "dual":
            from agent.capture.illumination import TwoCameras

            self.rig: Any = TwoCameras(source("print"), source("vein"))
        elif cam.layout == "switched":
            from agent.capture.illumination import Illumination, SwitchedLight

            light = cam.illumination
            leds = Illumination(
                light.print_pin, light.vein_pin, light.settle_ms / 1e3, light.active_high
            )  # type: ignore[arg-type]
            self.rig = SwitchedLight(source("print"), leds, lights)
            # the second frame of a capture comes a settle delay and two frame times after the
            # first: a thread takes it while the first goes through the pipeline
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="capture")
        else:
            self.rig = source(cam.layout)

    def read(self, modalities: tuple[str, ...]) -> Capture | None:
        from agent.capture import CaptureError

        if self._pending is not None:  # one read of the rig at a time
            wait([self._pending])
            self._pending = None
        wanted = [m for m in modalities if m in self.modalities] or list(self.modalities)
        order = self.rig.lit_first(wanted) if self._ahead is not None else wanted
        try:
            if len(self.modalities) == 1:
                frames = {self.modalities[0]: self.rig.read(self.timeout)}
            elif self._ahead is not None:
                frames = {order[0]: self.rig.capture(order[0], self.timeout)}
            else:
                frames = self.rig.capture_set(wanted, self.timeout)
        except CaptureError as e:
            self._lost(e)
            return None
        self.state = "ok"
        taken = min(f.timestamp for f in frames.values())
        images = {m: f.image for m, f in frames.items()}
        if self._ahead is None or len(order) == 1:
            return Capture(images, taken)
        # read ahead when the engine wanted the last capture's later frames: a hand is there
        hand = self._last is not None and self._last.wanted
        self._last = _Arriving(order, images, lambda: self._take(order[1:]), self._lost)
        if hand:
            self._last.ask()
        return Capture(self._last, taken)

    def _take(self, modalities: list[str]) -> Future:
        """Start taking ``modalities``' frames on the capture thread."""
        assert self._ahead is not None
        self._pending = self._ahead.submit(
            lambda: {m: self.rig.capture(m, self.timeout).image for m in modalities}
        )
        return self._pending

    def _lost(self, e: Exception) -> None:
        from agent.capture import EndOfStream

        self.state = "ended" if isinstance(e, EndOfStream) else "unavailable"
        logger.debug("capture no frame: %s", e)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(wait=True)
        self.rig.close()
        self.state = "closed"


class _Arriving(Mapping[str, "np.ndarray"]):
    """A capture's frames in the order they are taken: the first at hand, the others taken on
    the capture thread, from :meth:`ask` on (read ahead, or the first read of one); reading one
    of those waits for it, and raises :class:`FrameLost` when the camera failed to
    give it."""

    def __init__(
        self,
        order: list[str],
        have: dict[str, np.ndarray],
        take: Callable[[], Future],
        lost: Callable[[Exception], None],
    ) -> None:
        self._order, self._have, self._take, self._lost = order, have, take, lost
        self._rest: Future | None = None
        self.wanted = False  # whether a frame after the first was read

    def ask(self) -> None:
        """Start taking the frames after the first, if that has not started yet."""
        if self._rest is None:
            self._rest = self._take()

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, m: str) -> np.ndarray:
        from agent.capture import CaptureError

        if m not in self._have and m in self._order:
            self.wanted = True
            self.ask()
            assert self._rest is not None
            try:
                self._have.update(self._rest.result())
            except CaptureError as e:
                self._lost(e)
                raise FrameLost(f"no {m} frame: {e}") from e
        return self._have[m]
