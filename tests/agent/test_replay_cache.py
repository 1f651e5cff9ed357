"""Replay keeps decoded frames in memory within its budget, so a looped replay costs what a
camera costs (an array handed over), and falls back to decoding per grab beyond the budget."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from agent.capture import EndOfStream
from agent.capture.replay import ReplaySource

hands = pytest.importorskip("export.synth.hands")

FRAME_MB = 640 * 480 / 2**20  # one grey 640x480 frame


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hands")
    hands.write_hand_frames(out, ids=2, samples=2, level="medium", seed=5, video=True)
    return out


def _copy(frames_dir, tmp_path):
    folder = tmp_path / "print"
    shutil.copytree(frames_dir / "print", folder)
    return folder, sorted(folder.glob("*.png"))


def test_looped_folder_is_decoded_once(frames_dir, tmp_path):
    folder, files = _copy(frames_dir, tmp_path)
    with ReplaySource(folder, loop=True) as src:
        first = [src.read().image for _ in files]
        assert src.cached_mb == pytest.approx(len(files) * FRAME_MB)
        for f in files:
            f.unlink()  # a second pass that decoded again would fail here
        again = [src.read() for _ in files]
    for a, b, png in zip(first, again, files, strict=True):
        np.testing.assert_array_equal(a, b.image)
        assert b.meta["path"] == str(png)
        assert not b.image.flags.writeable  # shared by every pass: no stage may write into it
    assert [f.index for f in again] == list(range(len(files), 2 * len(files)))


def test_frames_beyond_the_budget_are_decoded_per_grab(frames_dir, tmp_path):
    folder, files = _copy(frames_dir, tmp_path)
    with ReplaySource(folder, loop=True, cache_mb=2 * FRAME_MB) as src:
        first = [src.read().image for _ in files]
        assert src.cached_mb == pytest.approx(2 * FRAME_MB)
        assert first[2].flags.writeable  # not kept: the grab's own array
        files[1].unlink()
        files[2].write_bytes(cv2.imencode(".png", np.zeros((480, 640), np.uint8))[1].tobytes())
        np.testing.assert_array_equal(src.read().image, first[0])
        np.testing.assert_array_equal(src.read().image, first[1])  # kept: the file is gone
        assert not src.read().image.any()  # not kept: decoded again, the new content
    with ReplaySource(folder, loop=True, cache_mb=0) as src:
        n = len(list(folder.glob("*.png")))
        assert src.read().image.any()
        files[0].write_bytes(files[2].read_bytes())  # now all zeros
        for _ in range(n - 1):
            src.read()
        assert not src.read().image.any()  # nothing is kept: the new content
        assert src.cached_mb == 0


def test_small_video_is_decoded_once_and_loops_from_memory(frames_dir, tmp_path):
    video = tmp_path / "print.avi"
    shutil.copy(frames_dir / "print.avi", video)
    with ReplaySource(video, loop=True) as src:
        first = [src.read() for _ in range(4)]
        video.unlink()
        again = [src.read() for _ in range(8)]
        assert src.cached_mb == pytest.approx(4 * FRAME_MB)
    for k, frame in enumerate(again):
        np.testing.assert_array_equal(frame.image, first[k % 4].image)
        assert frame.meta["video_frame"] == k % 4
    with ReplaySource(frames_dir / "print.avi", cache_mb=100) as src:
        assert len([src.read() for _ in range(4)]) == 4
        with pytest.raises(EndOfStream, match="after 4 frames"):
            src.read()


def test_video_over_the_budget_is_decoded_every_pass(frames_dir):
    with ReplaySource(frames_dir / "print.avi", loop=True, cache_mb=3 * FRAME_MB) as src:
        first = [src.read().image for _ in range(4)]
        again = [src.read().image for _ in range(4)]
        assert src.cached_mb == 0
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_negative_budget_is_refused(frames_dir):
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        ReplaySource(frames_dir / "print", cache_mb=-1)
