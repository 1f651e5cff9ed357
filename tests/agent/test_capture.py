"""Capture sources on real files (OpenCV, replay), the picamera2 adapter against a stand-in with
picamera2's documented API, LED switching on gpiozero's mock pins, and reopening with back-off.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from agent.capture import (
    CaptureError,
    EndOfStream,
    GrabTimeout,
    Reopening,
    SourceUnavailable,
    open_source,
)
from agent.capture.illumination import Illumination, SwitchedLight, TwoCameras
from agent.capture.opencv_source import OpenCVSource
from agent.capture.picamera2_source import Picamera2Source
from agent.capture.replay import ReplaySource

hands = pytest.importorskip("export.synth.hands")


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hands")
    paths = hands.write_hand_frames(out, ids=2, samples=3, level="medium", seed=3, video=True)
    return out, paths


def test_replay_folder_plays_once_in_order(frames_dir):
    out, _ = frames_dir
    files = sorted((out / "print").glob("*.png"))
    with ReplaySource(out / "print") as src:
        got = [src.read() for _ in files]
        with pytest.raises(EndOfStream):
            src.read()
    assert [f.meta["path"] for f in got] == [str(p) for p in files]
    assert [f.index for f in got] == list(range(len(files)))
    first = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(got[0].image, first)
    assert json.loads(files[0].with_suffix(".json").read_text())["modality"] == "print"


def test_replay_loops_at_the_given_rate(frames_dir):
    out, _ = frames_dir
    with ReplaySource(out / "vein", loop=True, fps=40) as src:
        t0 = time.monotonic()
        got = [src.read() for _ in range(9)]
        elapsed = time.monotonic() - t0
    assert got[6].meta["path"] == got[0].meta["path"]  # 6 images, then round again
    assert elapsed >= 8 / 40 * 0.95


def test_replay_grab_timeout(frames_dir):
    out, _ = frames_dir
    with ReplaySource(out / "print", fps=2) as src:
        src.read()
        t0 = time.monotonic()
        with pytest.raises(GrabTimeout):
            src.read(timeout=0.05)
        assert time.monotonic() - t0 < 0.3


def test_replay_video_matches_the_frames(frames_dir):
    out, paths = frames_dir
    assert out / "print.avi" in paths
    pngs = sorted((out / "print").glob("*.png"))
    with open_source({"kind": "replay", "path": str(out / "print.avi")}) as src:
        got = [src.read().image for _ in pngs]
        with pytest.raises(EndOfStream):
            src.read()
    for img, png in zip(got, pngs, strict=True):
        ref = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        assert img.shape == ref.shape == (480, 640)
        assert np.abs(img.astype(int) - ref).mean() < 4  # MJPG is lossy
    truths = json.loads((out / "print.json").read_text())
    assert len(truths) == len(pngs)


def test_replayed_16_bit_and_4_channel_images_are_8_bit_grey_frames(frames_dir, tmp_path):
    """A folder of NIR captures saved at 16 bits (or with an alpha band) replays as the 8-bit
    grey frames the pipeline works on; 16-bit frames made every ROI search fail."""
    from agent import roi

    out, _ = frames_dir
    png = sorted((out / "print").glob("*.png"))[0]
    grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    (tmp_path / "deep").mkdir()
    cv2.imwrite(str(tmp_path / "deep" / "a.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "deep" / "b.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA))
    with ReplaySource(tmp_path / "deep") as src:
        frames = [src.read().image for _ in range(2)]
    for image in frames:
        assert image.dtype == np.uint8 and image.shape == grey.shape
        np.testing.assert_array_equal(image, grey)
        assert roi.extract(image).square is not None
    with ReplaySource(tmp_path / "deep", grey=False) as src:
        assert src.read().image.dtype == np.uint8


def test_opencv_source_on_video_and_image_sequence(frames_dir, tmp_path):
    out, _ = frames_dir
    with OpenCVSource(str(out / "vein.avi")) as src:
        n = 0
        while True:
            try:
                frame = src.read(timeout=2.0)
            except EndOfStream:
                break
            assert frame.image.shape == (480, 640) and frame.image.dtype == np.uint8
            n += 1
    assert n == 6
    for k, png in enumerate(sorted((out / "print").glob("*.png"))):
        shutil.copy(png, tmp_path / f"seq_{k:03d}.png")
    with OpenCVSource(str(tmp_path / "seq_%03d.png")) as src:
        first = src.read(timeout=2.0).image
    ref = cv2.imread(str(tmp_path / "seq_000.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(first, ref)


@pytest.mark.parametrize(
    ("device", "ends"),
    [("clip.mp4", True), ("seq_%03d.png", True), (0, False), ("/dev/video0", False),
     ("/dev/v4l/by-id/usb-cam-video-index0", False), ("rtsp://cam.lan/stream", False),
     ("v4l2src ! videoconvert ! appsink", False)],
)  # fmt: skip
def test_only_files_end_a_camera_that_stops_has_failed(device, ends):
    """A file that runs out of frames has ended; a USB camera that is unplugged (an index or
    its /dev node) has failed, and the daemon reopens it."""
    assert OpenCVSource(device).ends is ends


def test_opencv_source_that_cannot_open_says_so(tmp_path):
    with pytest.raises(CaptureError, match="could not open"):
        OpenCVSource(str(tmp_path / "missing.avi")).open()
    with pytest.raises(ValueError, match="kind 'webcam' unknown"):
        open_source({"kind": "webcam"})


class FakeRequest:
    """picamera2's CompletedRequest: make_array, get_metadata, release."""

    def __init__(self, cam, array, metadata):
        self.cam, self.array, self.metadata = cam, array, metadata

    def make_array(self, name):
        assert name == "main" and self.cam.released < self.cam.requests  # not after release
        return self.array.copy()

    def get_metadata(self):
        return dict(self.metadata)

    def release(self):
        self.cam.released += 1


CONTROL_TYPES = {"AeEnable": bool, "ExposureTime": int, "AnalogueGain": (int, float)}


class FakePicamera2:
    """Stand-in keeping picamera2's documented API and array shapes per format, and libcamera's
    handling of controls on a Pi: a name the camera does not advertise, or a value of the wrong
    type, is refused; a value is clamped to the advertised range; the configuration's controls
    hold from the first frame, and one set while running shows in the metadata ``DELAY`` frames
    later (libcamera's delayed sensor controls).

    picamera2 runs ``capture_request``, ``stop`` and ``close`` (which stops) as jobs on its
    event loop, one after the other: a stop waits behind a capture that is waiting for a frame.
    """

    DELAY = 2
    AUTO_EXPOSURE_US = 10_000  # what auto exposure settles on in the stand-in's scene

    def __init__(self, camera_num: int = 0, block: threading.Event | None = None) -> None:
        self.camera_num, self.block = camera_num, block
        self._jobs = threading.Lock()  # picamera2's event loop: one job at a time
        # name -> (min, max, default), as Picamera2.camera_controls lists them (an IMX708's)
        self.camera_controls = {
            "AeEnable": (False, True, True),
            "ExposureTime": (26, 220_417_486, 20_000),
            "AnalogueGain": (1.12, 16.0, 1.0),
            "ColourGains": (0.0, 32.0, None),
            "FrameDurationLimits": (33_333, 220_417_486, 33_333),
            "NoiseReductionMode": (0, 4, 0),
        }
        self.config, self.controls, self.started, self.closed = None, {}, False, False
        self.calls: list[str] = []
        self.requests = self.released = 0
        self._pending: list[tuple[int, dict]] = []  # (first frame it shows in, controls)
        # the sensor sent the frame 20 ms before it was handed over (on time.monotonic's clock)
        self.sensor_ns = lambda: time.monotonic_ns() - 20_000_000

    def create_still_configuration(self, main=None, controls=None, **kw):
        # picamera2's still defaults, which the caller's controls update
        defaults = {"NoiseReductionMode": 2, "FrameDurationLimits": (100, 1_000_000_000)}
        return {
            "use_case": "still",
            "main": dict(main or {}),
            "controls": defaults | (controls or {}),
        }

    def _check(self, controls):
        for name, value in controls.items():
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
            kind = CONTROL_TYPES.get(name)
            if kind is not None and (
                not isinstance(value, kind) or (kind is int and isinstance(value, bool))
            ):
                raise TypeError(f"{name}: {value!r} is not {kind}")
        limits = controls.get("FrameDurationLimits")
        if limits is not None and not (len(limits) == 2 and all(type(v) is int for v in limits)):
            raise TypeError(f"FrameDurationLimits: {limits!r} is not two integers")

    def configure(self, config):
        self._check(config["controls"])
        self.calls.append("configure")
        self.config, self.controls = config, dict(config["controls"])

    def set_controls(self, controls):
        self._check(controls)
        self.calls.append("set_controls")
        self._pending.append((self.requests + self.DELAY, dict(controls)))

    def start(self):
        self.calls.append("start")
        self.started = True

    def capture_request(self):
        with self._jobs:
            if self.block is not None:
                self.block.wait(5)
            assert self.started
            for due, controls in [p for p in self._pending if p[0] <= self.requests]:
                self.controls.update(controls)
                self._pending.remove((due, controls))
            self.requests += 1
            return FakeRequest(self, self._array(), self.metadata())

    def _clamped(self, name, value):
        low, high, _ = self.camera_controls[name]
        return min(max(value, low), high)

    def metadata(self):
        """The applied exposure, gain and frame duration of the frame taken now."""
        low, high = (
            self._clamped("FrameDurationLimits", v) for v in self.controls["FrameDurationLimits"]
        )
        auto = self.controls.get("AeEnable", True) and "ExposureTime" not in self.controls
        exposure = self.AUTO_EXPOSURE_US if auto else self.controls["ExposureTime"]
        exposure = min(self._clamped("ExposureTime", exposure), high)
        meta = {
            "ExposureTime": exposure,
            "AnalogueGain": self._clamped("AnalogueGain", self.controls.get("AnalogueGain", 1.0)),
            "FrameDuration": min(max(exposure, low), high),
        }
        sensor_ns = self.sensor_ns()
        return meta if sensor_ns is None else meta | {"SensorTimestamp": sensor_ns}

    def _array(self):
        w, h = self.config["main"]["size"]
        fmt = self.config["main"]["format"]
        y = (np.arange(h)[:, None] + 2 * np.arange(w)[None, :]) % 256
        if fmt == "YUV420":
            # picamera2 leaves the row padding in: (h * 3 / 2, stride), and the Pi's ISP aligns
            # a YUV420 row to 64 bytes
            stride = -(-w // 64) * 64
            yuv = np.vstack([y, np.full((h // 2, w), 128)])
            return np.pad(yuv, ((0, 0), (0, stride - w)), constant_values=7).astype(np.uint8)
        order = [2, 1, 0] if fmt == "RGB888" else [0, 1, 2]  # RGB888 is stored B, G, R
        rgb = np.stack([y, y // 2, 255 - y], axis=-1).astype(np.uint8)
        return np.ascontiguousarray(rgb[:, :, order])

    def stop(self):
        with self._jobs:
            self.calls.append("stop")
            self.started = False

    def close(self):
        with self._jobs:
            self.calls.append("close")
            self.closed = True


@pytest.mark.parametrize("fmt", ["YUV420", "RGB888", "BGR888"])
@pytest.mark.parametrize("width", [64, 72])
def test_picamera2_adapter_formats_and_controls(fmt, width):
    """72 pixels wide: a YUV420 row padded to 128 bytes, as picamera2 returns it (every frame
    was refused for its shape)."""
    cams = []

    def factory(n):
        cams.append(FakePicamera2(n))
        return cams[-1]

    controls = {"ExposureTime": 8000, "AnalogueGain": 2.0, "AeEnable": False}
    src = Picamera2Source(1, size=(width, 48), fmt=fmt, controls=controls, factory=factory)
    with src:
        frame = src.read(timeout=1.0)
    cam = cams[0]
    assert cam.camera_num == 1 and cam.config["main"] == {"size": (width, 48), "format": fmt}
    # in the configuration: they hold from the first frame
    assert cam.config["controls"].items() >= controls.items()
    assert cam.calls == ["configure", "start", "stop", "close"]
    assert cam.requests == 1
    assert cam.metadata()["ExposureTime"] == 8000
    assert frame.image.shape == (48, width) and frame.image.dtype == np.uint8
    y = ((np.arange(48)[:, None] + 2 * np.arange(width)[None, :]) % 256).astype(np.uint8)
    if fmt == "YUV420":
        np.testing.assert_array_equal(frame.image, y)
    else:  # grey from the right channel order: red = y, blue = 255 - y
        expect = 0.299 * y + 0.587 * (y // 2) + 0.114 * (255 - y.astype(int))
        assert np.abs(frame.image - expect).max() <= 1.0


def test_picamera2_frame_rate_is_the_configured_fps():
    """camera.fps reaches the camera as both ends of FrameDurationLimits (picamera2's still
    configuration otherwise lets a frame last from 100 us to 1000 s)."""
    cams = []

    def factory(n):
        cams.append(FakePicamera2(n))
        return cams[-1]

    with Picamera2Source(size=(64, 48), fps=15, factory=factory) as src:
        src.read(timeout=1.0)
    cam = cams[0]
    assert cam.config["controls"]["FrameDurationLimits"] == (66667, 66667)
    assert cam.metadata()["FrameDuration"] == 66667


def test_picamera2_hands_over_the_first_frame_taken_with_new_controls():
    """libcamera shows a control set while running two frames later: the frames before are
    dropped, so a vein frame is never one exposed for print. A gain under the sensor's minimum
    (1.0 on an IMX708, which starts at 1.12) counts as applied once the minimum is there."""
    cams = []

    def factory(n):
        cams.append(FakePicamera2(n))
        return cams[-1]

    print_light = {"AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 1.0}
    with Picamera2Source(size=(64, 48), fps=15, controls=print_light, factory=factory) as src:
        cam = cams[0]
        src.read(timeout=1.0)
        assert cam.requests == 1  # the configuration's controls hold from the first frame
        src.set_controls({"AeEnable": False, "ExposureTime": 20000, "AnalogueGain": 4.0})
        src.read(timeout=1.0)
        assert cam.requests == 1 + 1 + FakePicamera2.DELAY
        assert cam.metadata()["ExposureTime"] == 20000 and cam.requests == cam.released
        src.set_controls(print_light)
        src.read(timeout=1.0)
        assert cam.requests == 4 + 1 + FakePicamera2.DELAY
        assert cam.metadata()["AnalogueGain"] == 1.12
        src.read(timeout=1.0)  # no switch: the next frame
        assert cam.requests == 8


def test_picamera2_controls_that_never_show_are_given_up_on(caplog):
    """A sensor that never reports what was set (an exposure it cannot take) costs a bounded
    number of frames and says so, rather than blocking every read."""
    from agent.config import CONTROL_SETTLE_FRAMES as SETTLE_FRAMES

    cams = []

    class Stuck(FakePicamera2):
        def set_controls(self, controls):
            self._check(controls)  # accepted, never applied

    def factory(n):
        cams.append(Stuck(n))
        return cams[-1]

    with Picamera2Source(size=(64, 48), controls={"ExposureTime": 8000}, factory=factory) as src:
        src.set_controls({"ExposureTime": 20000})
        with caplog.at_level("WARNING"):
            src.read(timeout=1.0)
        assert cams[0].requests == SETTLE_FRAMES + 1
        assert "controls_not_applied" in caplog.text
        src.read(timeout=1.0)
        assert cams[0].requests == SETTLE_FRAMES + 2


def test_picamera2_refuses_a_control_the_camera_does_not_advertise():
    src = Picamera2Source(controls={"Exposure": 8000}, factory=FakePicamera2)
    with pytest.raises(CaptureError, match="Control Exposure is not advertised"):
        src.open()


def test_picamera2_frames_are_timed_by_the_sensor():
    """A frame carries the time the sensor sent it (20 ms before it was handed over here), so
    a decision's latency counts the frame's wait in picamera2's buffers; without a usable sensor
    timestamp it carries its arrival. Every request goes back to the camera."""
    cams = []

    def factory(n):
        cams.append(FakePicamera2(n))
        return cams[-1]

    with Picamera2Source(fmt="YUV420", size=(64, 48), factory=factory) as src:
        before = time.monotonic()
        frame = src.read(timeout=1.0)
        after = time.monotonic()
        assert before - 0.0201 <= frame.timestamp <= after - 0.0199, (before, frame, after)
        cam = cams[0]
        for odd in (None, 0, time.monotonic_ns() + 10**9):  # none, another clock, the future
            cam.sensor_ns = lambda odd=odd: odd
            before = time.monotonic()
            assert before <= src.read(timeout=1.0).timestamp <= time.monotonic()
    assert cam.requests == cam.released == 4


def test_picamera2_grab_timeout_and_missing_module():
    release = threading.Event()
    src = Picamera2Source(fmt="YUV420", factory=lambda n: FakePicamera2(n, block=release))
    src.open()
    t0 = time.monotonic()
    with pytest.raises(GrabTimeout):
        src.read(timeout=0.1)
    assert time.monotonic() - t0 < 1.0
    release.set()
    src.close()
    with pytest.raises(CaptureError, match="picamera2 is not installed"):
        Picamera2Source().open()


class SlowPicamera2(FakePicamera2):
    """A sensor that takes 130 ms a frame: auto exposure in low light."""

    def capture_request(self):
        time.sleep(0.13)
        return super().capture_request()


def test_a_camera_slower_than_the_read_timeout_still_delivers_its_frames():
    """Each frame that comes after one read timed out goes to the next read: the camera
    delivers at its own rate and is never taken for a failed one. Every frame was thrown away
    (10 capture_failed and no frame in 3 s) when each read asked the driver anew."""
    events = []
    src = Reopening(
        Picamera2Source(size=(64, 48), factory=SlowPicamera2),
        report=lambda e, f: events.append(e),
        backoff_s=(0.05, 0.2),
    )
    src.open()
    got, t0 = [], time.monotonic()
    while time.monotonic() - t0 < 1.5:
        with contextlib.suppress(GrabTimeout):
            got.append(src.read(timeout=0.1))
    after = time.monotonic()
    src.close()
    assert events == [] and len(got) >= 8, (events, len(got))
    assert [f.index for f in got] == list(range(len(got)))
    # each frame carries when the sensor sent it, never long before it was handed over
    assert all(after - 1.6 < f.timestamp < after for f in got)


def test_a_frame_that_came_long_after_its_read_timed_out_is_not_handed_over():
    """A read that timed out and a next read minutes later (a button press): the frame that
    arrived in between is old, and the next read asks for a fresh one."""
    from agent.capture.base import TimedCalls

    calls, slow = TimedCalls("cam"), threading.Event()
    frames = iter(["old", "fresh"])

    def read() -> str:
        slow.wait(5)
        return next(frames)

    with pytest.raises(GrabTimeout):
        calls.call(read, 0.05)
    slow.set()
    time.sleep(0.2)  # "old" arrived 0.15 s after its read gave up, and waits
    assert calls.call(read, 0.1) == "fresh"
    calls.close(lambda: None)


class ProbeSource:
    """A source recording the LED pin states at the moment each frame is read."""

    name = "probe"
    is_open = True

    def __init__(self, light: Illumination) -> None:
        self.light, self.states, self.controls = light, [], []

    def read(self, timeout=1.0):
        from agent.capture.base import Frame

        pins = (self.light.white.pin.state, self.light.nir.pin.state)
        self.states.append((pins, time.monotonic()))
        return Frame(np.zeros((4, 4), np.uint8), time.monotonic(), len(self.states), self.name)

    def set_controls(self, controls):
        self.controls.append(controls)

    def close(self):
        pass


@pytest.fixture
def mock_pins():
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    old = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = old


def test_switched_light_sets_the_pins_for_each_capture(mock_pins):
    light = Illumination(white_pin=17, nir_pin=27, settle_s=0.03)
    probe = ProbeSource(light)
    cam = SwitchedLight(
        probe, light, controls={"print": {"ExposureTime": 4000}, "vein": {"ExposureTime": 9000}}
    )
    t_switch = time.monotonic()
    p, v = cam.capture_set(("print", "vein")).values()
    assert p.meta["modality"] == "print" and v.meta["modality"] == "vein"
    # one stale frame dropped after each switch, then the kept frame: all under the new light
    pins = [s for s, _ in probe.states]
    assert pins == [(1, 0), (1, 0), (0, 1), (0, 1)]
    assert probe.states[0][1] - t_switch >= 0.03  # the settle delay came first
    assert probe.controls == [{"ExposureTime": 4000}, {"ExposureTime": 9000}]
    cam.capture("vein")  # no switch: no settle, no dropped frame
    assert len(probe.states) == 5 and probe.states[-1][0] == (0, 1)
    cam.close()
    assert light.white.closed and light.nir.closed


def test_a_capture_starts_under_the_light_the_last_one_left_on(mock_pins):
    """Captures of both modalities one after another switch the light once each, not twice:
    each starts with the modality whose light is on, and still hands the frames over in the
    order asked for (the ROI search runs on the first)."""
    light = Illumination(white_pin=17, nir_pin=27, settle_s=0.0)
    probe = ProbeSource(light)
    cam = SwitchedLight(probe, light)
    reads, switches = [], []
    for _ in range(4):
        before, lit = len(probe.states), light.current
        frames = cam.capture_set(("print", "vein"))
        assert list(frames) == ["print", "vein"]
        assert [f.meta["modality"] for f in frames.values()] == ["print", "vein"]
        # each frame was read under its own light
        assert probe.states[frames["print"].index - 1][0] == (1, 0)
        assert probe.states[frames["vein"].index - 1][0] == (0, 1)
        reads.append(len(probe.states) - before)
        switches.append(sum(a != b for a, b in itertools.pairwise([lit, *light_order(frames)])))
    # the first capture lights print, then vein; each later one starts under the light left on
    assert reads == [4, 3, 3, 3], reads
    assert switches == [2, 1, 1, 1], switches
    cam.close()


def light_order(frames: dict) -> list[str]:
    return [f.meta["modality"] for f in sorted(frames.values(), key=lambda f: f.index)]


def test_active_low_leds(mock_pins):
    light = Illumination(white_pin=5, nir_pin=6, settle_s=0.0, active_high=False)
    light.select("vein")
    assert (mock_pins.pin(5).state, mock_pins.pin(6).state) == (1, 0)  # low = lit
    light.close()


def test_two_cameras(frames_dir):
    out, _ = frames_dir
    cams = TwoCameras(ReplaySource(out / "print"), ReplaySource(out / "vein"))
    for s in cams.sources.values():
        s.open()
    p, v = cams.capture_set(("print", "vein")).values()
    cams.close()
    assert "/print/" in p.meta["path"] and "/vein/" in v.meta["path"]


class VanishingSource(ReplaySource):
    """A real replay whose camera 'vanishes' after a few frames, as an unplugged USB one does."""

    def __init__(self, path, fail_after: int) -> None:
        super().__init__(path, loop=True)
        self.fail_after = fail_after

    def read(self, timeout=1.0):
        if self._count >= self.fail_after:
            raise OSError("No such device")
        return super().read(timeout)


def test_reopen_with_back_off_reports_and_never_crashes(frames_dir, tmp_path):
    out, _ = frames_dir
    events = []
    src = Reopening(
        VanishingSource(out / "print", fail_after=2),
        report=lambda e, f: events.append((e, f, time.monotonic())),
        backoff_s=(0.05, 0.2),
    )
    src.open()
    assert src.read().index == 0 and src.read().index == 1
    with pytest.raises(CaptureError):
        src.read()
    assert events[-1][0] == "capture_failed" and "No such device" in events[-1][1]["error"]
    assert not src.is_open
    with pytest.raises(SourceUnavailable):
        src.read(timeout=0.0)  # inside the back-off: no attempt, no wait
    frame = src.read(timeout=0.5)  # waits out the back-off and reopens
    assert frame.index == 0 and events[-1][0] == "reopened"

    # a camera missing at start: reopen attempts back off 0.05, 0.1, 0.2, 0.2 s
    missing = tmp_path / "cam"
    events.clear()
    gone = Reopening(
        ReplaySource(missing),
        report=lambda e, f: events.append((e, f, time.monotonic())),
        backoff_s=(0.05, 0.2),
    )
    gone.open()
    for _ in range(4):
        with pytest.raises(SourceUnavailable):
            gone.read(timeout=0.5)
    delays = [f["retry_in_s"] for e, f, _ in events]
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    gaps = np.diff([t for *_, t in events])
    assert all(g >= d * 0.9 for g, d in zip(gaps, delays, strict=False))
    shutil.copytree(out / "print", missing)
    assert gone.read(timeout=0.5).index == 0
    assert events[-1][0] == "reopened" and events[-1][1]["failures"] == 5


def test_repeated_timeouts_count_as_a_failure(frames_dir):
    out, _ = frames_dir
    events = []
    src = Reopening(
        ReplaySource(out / "print", fps=1),
        report=lambda e, f: events.append(e),
        max_timeouts=2,
        backoff_s=(0.01, 0.01),
    )
    src.open()
    src.read()
    for _ in range(2):
        with pytest.raises(GrabTimeout):
            src.read(timeout=0.01)
    assert events == ["capture_failed"] and not src.is_open


def test_a_call_stuck_in_the_driver_never_has_a_second_beside_it():
    """OpenCV's VideoCapture is not safe from two threads: after a timeout the next reads wait
    behind the stuck one (and time out too) instead of entering the driver beside it."""
    import threading

    from agent.capture.base import GrabTimeout, TimedCalls

    inside, most, lock, stuck = [0], [0], threading.Lock(), threading.Event()

    def read(block: bool) -> str:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        if block:
            stuck.wait(5)
        with lock:
            inside[0] -= 1
        return "frame"

    calls = TimedCalls("cam")
    with pytest.raises(GrabTimeout):
        calls.call(lambda: read(True), 0.1)
    for _ in range(2):
        with pytest.raises(GrabTimeout):
            calls.call(lambda: read(False), 0.1)
    stuck.set()  # the driver comes back
    assert calls.call(lambda: read(False), 1.0) == "frame"
    assert most[0] == 1
    calls.close(lambda: None)


def test_a_camera_that_opens_but_gives_no_frame_is_retried_with_back_off(tmp_path):
    """Only a frame ends the back-off: a camera that opened and then failed every read (a USB
    camera that enumerates but streams nothing; here an unreadable image) was reopened at the
    shortest delay for ever, with a capture_failed and a reopened event each time (81 events in
    2 s at a 0.05 s minimum; 4 a second with the defaults)."""
    cam = tmp_path / "cam"
    cam.mkdir()
    (cam / "00000.png").write_bytes(b"not a png")
    events: list[tuple[str, float]] = []
    src = Reopening(
        ReplaySource(cam, loop=True, cache_mb=0),
        report=lambda e, f: events.append((e, time.monotonic())),
        backoff_s=(0.05, 0.2),
    )
    src.open()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        with pytest.raises(CaptureError):
            src.read(timeout=0.5)
    failed = [t for e, t in events if e == "capture_failed"]
    assert len(failed) <= 8, len(failed)  # 0.05, 0.1, 0.2, 0.2, ... s apart
    gaps = np.diff(failed)
    assert all(g >= min(0.05 * 2**i, 0.2) * 0.9 for i, g in enumerate(gaps)), gaps
    # the camera gives frames again: a frame ends the back-off, the next failure retries soon
    cv2.imwrite(str(cam / "00000.png"), np.full((64, 64), 128, np.uint8))
    assert src.read(timeout=0.5).image.shape == (64, 64)
    (cam / "00000.png").write_bytes(b"not a png")
    with pytest.raises(CaptureError):
        src.read(timeout=0.5)
    assert src.next_attempt - time.monotonic() <= 0.05
