"""Closing a source while a timed-out read is still inside the driver.

OpenCV runs on a named pipe that a writer feeds with the first half of a real MJPEG clip and
then holds open without a byte more: FFmpeg's read blocks there, as it does on a camera or a
stream that stops sending. Each run is a child process, since what went wrong was a crash
(the read coming back into a released capture) or a process that never exited.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture import GrabTimeout, base
from agent.capture.picamera2_source import Picamera2Source

from .test_capture import FakePicamera2

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import logging, os, sys, threading, time
from agent.capture import CaptureError, GrabTimeout, Reopening, base
from agent.capture.opencv_source import OpenCVSource

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
base.CLOSE_WAIT_S = 0.3
clip, tmp, then = sys.argv[1:4]
data = open(clip, "rb").read()
fifo, camera = os.path.join(tmp, "pipe"), os.path.join(tmp, "camera")
os.mkfifo(fifo)
os.symlink(fifo, camera)
hang_up = threading.Event()

def stalling_camera():
    with open(fifo, "wb") as pipe:
        pipe.write(data[: len(data) // 2])
        pipe.flush()
        hang_up.wait()

threading.Thread(target=stalling_camera, daemon=True).start()
if then == "reopen":
    src = Reopening(OpenCVSource(camera), max_timeouts=2, backoff_s=(0.01, 0.01))
else:
    src = OpenCVSource(camera)
src.open()
frames = 0
while True:
    try:
        src.read(timeout=0.5)
        frames += 1
    except GrabTimeout:
        if not src.is_open or then != "reopen":
            break
print(f"stuck after frames={frames}", flush=True)
t0 = time.monotonic()
if then == "reopen":  # the camera comes back (the link now names the whole clip)
    os.unlink(camera)
    os.symlink(clip, camera)
    print(f"reopened index={src.read(timeout=2.0).index}", flush=True)
else:
    src.close()
print(f"close_s={time.monotonic() - t0:.2f}", flush=True)
if then == "exit":
    sys.exit(0)  # the stuck read never returns: the process must exit all the same
hang_up.set()  # the stuck read returns now, into whatever close left it
time.sleep(0.5)
if then == "reopen":
    print(f"after index={src.read(timeout=2.0).index}", flush=True)
    src.close()
print("alive", flush=True)
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    noise = np.random.default_rng(0)
    for _ in range(40):  # noise: frames big enough that half the clip is several frames
        writer.write(noise.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def run_child(clip: Path, tmp: Path, then: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(clip), str(tmp), then],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("then", ["returns", "exit"])
def test_closing_during_a_stuck_read_neither_crashes_nor_holds_the_process(clip, tmp_path, then):
    """close() waits a bounded time, then leaves the release to the reading thread: releasing
    the capture under the stuck read crashed the process (SIGSEGV) once the read came back,
    and a read that never came back kept the process from exiting (systemd had to kill it)."""
    try:
        child = run_child(clip, tmp_path, then)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process did not exit: {e.stdout!r}")
    out = child.stdout
    assert child.returncode == 0, (child.returncode, out, child.stderr[-2000:])
    assert int(out.split("stuck after frames=")[1].split()[0]) > 0, out
    assert "capture release_deferred source=opencv:" in out, out
    close_s = float(out.split("close_s=")[1].split()[0])
    assert 0.25 <= close_s < 1.5, out
    if then == "returns":
        assert "capture released_late source=opencv:" in out and "alive" in out, out


def test_a_reopen_after_a_stuck_read_opens_afresh_and_the_old_capture_goes_later(clip, tmp_path):
    """Repeated timeouts close the source and the next read reopens it; the old capture is
    released only once its stuck read returns, and that return no longer crashes the
    process."""
    try:
        child = run_child(clip, tmp_path, "reopen")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process did not exit: {e.stdout!r}")
    out = child.stdout
    assert child.returncode == 0, (child.returncode, out, child.stderr[-2000:])
    assert "capture failed source=opencv:" in out and "release_deferred" in out, out
    assert "reopened index=0" in out and "after index=1" in out, out
    assert "capture released_late" in out and "alive" in out, out


def test_closing_a_picamera2_whose_capture_waits_for_a_frame_does_not_wait_with_it(monkeypatch):
    """picamera2 runs ``stop`` behind the pending capture on its event loop: close() stopped
    the camera straight away and so waited as long as the capture did. Now the stop and close
    run once that capture returns. (The stand-in then opens a second camera at once; libcamera
    refuses to acquire a camera still held, so on a Pi the reopen backs off until then.)"""
    monkeypatch.setattr(base, "CLOSE_WAIT_S", 0.2)
    frame_comes, cams = threading.Event(), []

    def factory(n: int) -> FakePicamera2:
        cams.append(FakePicamera2(n, block=frame_comes))
        return cams[-1]

    src = Picamera2Source(size=(64, 48), factory=factory)
    src.open()
    with pytest.raises(GrabTimeout):
        src.read(timeout=0.1)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert "stop" not in cams[0].calls and not src.is_open
    src.open()
    frame_comes.set()
    assert src.read(timeout=1.0).index == 0
    src.close()
    deadline = time.monotonic() + 2.0
    while not cams[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cams[0].calls[-2:] == ["stop", "close"] and cams[0].requests == cams[0].released
    assert cams[1].calls[-2:] == ["stop", "close"]
