"""One camera under switched light: a capture's first frame is processed while the camera waits
out the switch for the second (gpiozero's mock pins, a replay at the camera's frame rate)."""

from __future__ import annotations

import time

import pytest

from agent.capture import CaptureError

from .conftest import watch_infer
from .test_daemon import agent_config, write_replay


@pytest.fixture
def switched_daemon(running_broker, palm_bundle, tmp_path):
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.run_cli import build

    Device.pin_factory = MockFactory()
    cfg = agent_config(
        tmp_path, running_broker, "dev20", palm_bundle, write_replay(tmp_path / "r", [2, 3]),
        camera={"layout": "switched", "fps": 10, "illumination": {"settle_ms": 50}},
    )  # fmt: skip
    daemon = build(cfg, with_reporter=False)
    yield daemon
    daemon.close()
    Device.pin_factory.close()
    Device.pin_factory = None


def watch_camera(daemon) -> list[tuple[str, float, float]]:
    """Record each frame the rig takes: (modality, start, end), on ``time.perf_counter``."""
    rig = daemon.source.rig
    taken: list[tuple[str, float, float]] = []
    capture = rig.capture

    def watched(modality, timeout=1.0):
        t0 = time.perf_counter()
        frame = capture(modality, timeout)
        taken.append((modality, t0, time.perf_counter()))
        return frame

    rig.capture = watched
    return taken


def test_the_first_frame_is_hashed_while_the_second_is_taken(switched_daemon):
    daemon = switched_daemon
    runs = {m: watch_infer(b) for m, b in daemon.engine.backends.items()}
    taken = watch_camera(daemon)
    for n in range(1, 4):
        probe, _ = daemon._grab()
        assert probe is not None and set(probe.codes) == {"print", "vein"}
        (first, _, _), (second, _, second_end) = taken[-2:]
        # each capture starts under the light the last one left on
        assert first == ("print" if n % 2 else "vein"), taken
        # the first frame's model ran, and finished, before the second frame was there: 50 ms
        # of settle and two frames at 10 frames/s after the first
        assert runs[first][-1][2] < second_end, (runs, taken)
        assert runs[second][-1][1] > second_end
        # the wait for the second frame is counted as capture time, not as a vision stage
        assert probe.timings["capture"] > 100, probe.timings
        assert probe.timings["roi"] < 100, probe.timings
    assert daemon.source.state == "ok"


def test_a_lost_second_frame_drops_the_capture_and_the_next_one_goes_on(switched_daemon):
    daemon = switched_daemon
    rig = daemon.source.rig
    capture, calls = rig.capture, []

    def failing_second(modality, timeout=1.0):
        calls.append(modality)
        if len(calls) == 2:
            raise CaptureError("sensor timeout")
        return capture(modality, timeout)

    rig.capture = failing_second
    probe, _ = daemon._grab()
    assert probe is None and daemon.source.state == "unavailable"
    probe, _ = daemon._grab()
    assert probe is not None and set(probe.codes) == {"print", "vein"}
    assert daemon.source.state == "ok"
    assert len(calls) == 4


def test_an_idle_reader_looks_under_the_light_already_on_and_reads_ahead_once_a_hand_is_there(
    running_broker, palm_bundle, tmp_path
):
    """Nobody there: one frame per look, no switch (no LED flicker). A hand: the first capture
    takes its second frame when the engine asks for it, the next ones read ahead again. The
    hand gone (a dark scene now): the capture read ahead ends the run, then idle again."""
    import cv2
    import numpy as np
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.run_cli import build
    from export.synth.hands import render_hand_frame

    frames = tmp_path / "r" / "print"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(1)
    hand = render_hand_frame(2, 0, seed=4, level="easy")[0]
    # a lit empty scene, a still hand, then a dark empty scene
    for i, level in enumerate([70] * 6 + [None] * 15 + [12] * 12):
        image = hand if level is None else rng.normal(level, 4, (480, 640))
        cv2.imwrite(str(frames / f"{i:05d}.png"), image.clip(0, 255).astype(np.uint8))
    Device.pin_factory = MockFactory()
    cfg = agent_config(
        tmp_path, running_broker, "dev21", palm_bundle, tmp_path / "r",
        camera={"layout": "switched", "fps": 50, "loop": False,
                "illumination": {"settle_ms": 10}},
        roi={"already_roi": False},
    )  # fmt: skip
    daemon = build(cfg, with_reporter=False)
    try:
        taken = watch_camera(daemon)
        light = daemon.source.rig.light
        select, switches = light.select, []
        light.select = lambda m: select(m) and switches.append(m) is None
        for n in range(5):  # the first look turns the light on (and drops a frame)
            probe, _ = daemon._grab()
            assert probe is not None and probe.rejected == "no_hand", probe
            assert len(taken) == n + 1 and switches == ["print"], (taken, switches)
        probe, _ = daemon._grab()  # the hand: the engine asks for the second frame
        assert probe is not None and set(probe.codes) == {"print", "vein"}, probe.quality
        assert [m for m, _, _ in taken[5:]] == ["print", "vein"] and switches[-1] == "vein"
        # a hand was there last time: the second frame is on its way before anyone asks
        capture = daemon.source.read(("print", "vein"))
        assert capture is not None and list(capture.images) == ["vein", "print"]
        time.sleep(0.3)  # the switch, a dropped frame and a frame take 50 ms
        assert [m for m, _, _ in taken[7:]] == ["vein", "print"], taken
        assert switches == ["print", "vein", "print"]
        assert daemon.engine.vision(capture.images).codes
        for _ in range(3):  # the hand stays: read ahead, one switch a capture
            probe, _ = daemon._grab()
            assert probe is not None and set(probe.codes) == {"print", "vein"}
        assert len(taken) == 15 and len(switches) == 6, (taken, switches)
        # the hand leaves: the capture read ahead takes its second frame, then idle again
        for _ in range(6):
            probe, _ = daemon._grab()
            assert probe is not None and probe.rejected == "too_dark" and not probe.codes
        assert len(taken) == 15 + 2 + 5 and len(switches) == 7, (taken, switches)
    finally:
        daemon.close()
        Device.pin_factory.close()
        Device.pin_factory = None


def _lit_rig(monkeypatch, fail_vein_once: bool = False):
    """The daemon's capture rig over a picamera2 stand-in whose frames are as bright as
    exposure x gain (print 8000 us x 1.5 -> 24, vein 20000 us x 4.0 -> 160), under mock pins."""
    import numpy as np
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from agent.capture.camera import Camera
    from agent.config import parse_config

    from .test_capture import FakePicamera2

    cams = []

    class LitPicamera2(FakePicamera2):
        def __init__(self, n):
            super().__init__(n)
            cams.append(self)
            self.failures = 1 if fail_vein_once else 0

        def set_controls(self, controls):
            if controls.get("ExposureTime") == 20000 and self.failures:
                self.failures -= 1
                raise RuntimeError("Failed to set controls")  # a transient libcamera error
            super().set_controls(controls)

        def _array(self):
            meta = self.metadata()
            w, h = self.config["main"]["size"]
            level = min(255, round(meta["ExposureTime"] * meta["AnalogueGain"] / 500))
            return np.full((h * 3 // 2, -(-w // 64) * 64), level, np.uint8)

    monkeypatch.setattr("agent.capture.picamera2_source._default_factory", LitPicamera2)
    Device.pin_factory = MockFactory()
    cfg = parse_config(
        {"camera": {"source": "picamera2", "layout": "switched", "fps": 15,
                    "width": 64, "height": 48, "illumination": {"settle_ms": 0},
                    "controls": {
                        "print": {"AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 1.5},
                        "vein": {"AeEnable": False, "ExposureTime": 20000, "AnalogueGain": 4.0},
                    }}},
        env={}, check_files=False,
    )  # fmt: skip
    return Camera(cfg.camera), cams


def _close_rig(camera) -> None:
    from gpiozero import Device

    camera.close()
    Device.pin_factory.close()
    Device.pin_factory = None


def test_a_light_whose_controls_failed_to_apply_gets_them_at_its_next_frame(monkeypatch):
    """set_controls failing once at a switch left that light on with the other light's exposure
    and gain: the next capture found the light already on and never set them again."""
    from agent.capture.camera import FrameLost

    camera, _ = _lit_rig(monkeypatch, fail_vein_once=True)
    try:
        first = camera.read(("print", "vein"))
        assert first is not None
        with pytest.raises(FrameLost, match="set_controls failed"):  # its second frame is lost
            first.images["vein"]  # waits for the frame taken ahead
        capture = camera.read(("print", "vein"))
        assert capture is not None
        assert {m: int(image.mean()) for m, image in capture.images.items()} == {
            "print": 24,
            "vein": 160,
        }
    finally:
        _close_rig(camera)


def test_each_light_gets_its_exposure_and_gain_before_its_frame(monkeypatch):
    """camera.controls through the daemon's capture rig: at each switch the camera gets that
    light's exposure and gain, and the frame handed over was taken with them (libcamera applies
    them two frames late). Before, the controls never reached the camera: the rig was built
    without them, and the reopen wrapper had no set_controls for the switch to call."""
    camera, cams = _lit_rig(monkeypatch)
    try:
        levels = []
        for _ in range(3):
            capture = camera.read(("print", "vein"))
            assert capture is not None
            levels.append([(m, int(image.mean())) for m, image in capture.images.items()])
        # print 8000 us x 1.5, vein 20000 us x 4.0; each capture starts under the light left on
        p, v = ("print", 24), ("vein", 160)
        assert levels == [[p, v], [v, p], [p, v]], levels
        (cam,) = cams
        assert cam.config["controls"]["FrameDurationLimits"] == (66667, 66667)
    finally:
        _close_rig(camera)
