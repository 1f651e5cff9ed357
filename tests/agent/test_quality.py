"""Each named rejection, constructed from a real synthetic frame, and the pass case."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent import quality, roi

hands = pytest.importorskip("export.synth.hands")


def _verdict(frame: np.ndarray, **limits) -> quality.Verdict:
    return quality.assess(frame, roi.extract(frame), quality.QualityThresholds(**limits))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return hands.render_hand_frame(4, 1, seed=2, level="medium")[0]


def test_good_frames_pass():
    verdicts = [_verdict(hands.render_hand_frame(i, 0, seed=8)[0]) for i in range(12)]
    assert all(v.ok for v in verdicts), [v.reason for v in verdicts]
    assert {"roi_mean", "laplacian_var", "saturated_frac"} <= set(verdicts[0].measures)


def test_no_hand():
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(40, 10, (480, 640)), 0, 255).astype(np.uint8)
    assert _verdict(noise).reason == "no_hand"


def test_partial_hand(frame):
    shifted = cv2.warpAffine(frame, np.float32([[1, 0, 0], [0, 1, -170]]), (640, 480))
    assert _verdict(shifted).reason == "partial_hand"


def test_too_dark(frame):
    assert _verdict((frame * 0.1).astype(np.uint8)).reason == "too_dark"  # light off
    dim = (frame * 0.25).astype(np.uint8)  # light on, but the palm too dim to hash
    v = _verdict(dim)
    assert v.reason == "too_dark" and v.measures["frame_p99"] >= 40


def test_saturated(frame):
    bright = np.clip(frame.astype(float) * 1.6, 0, 255).astype(np.uint8)
    v = _verdict(bright)
    assert v.reason == "saturated" and v.measures["saturated_frac"] > 0.05


def test_blurred(frame):
    v = _verdict(cv2.GaussianBlur(frame, (0, 0), 3))
    assert v.reason == "blurred"
    assert v.measures["laplacian_var"] < _verdict(frame).measures["laplacian_var"] / 3


def test_roi_too_small():
    small, truth = hands.render_hand_frame(1, 0, seed=3, size=(320, 240))
    v = _verdict(small)
    assert truth["side"] < 48 and v.reason == "roi_too_small"
    assert _verdict(small, min_roi_side_px=20).ok


def test_fingers_not_found():
    fist = np.full((240, 320), 12, np.uint8)
    cv2.ellipse(fist, (160, 120), (70, 90), 0, 0, 360, 180, -1)
    assert _verdict(fist).reason == "fingers_not_found"


def test_thresholds_from_config():
    t = quality.QualityThresholds.from_dict({"min_laplacian_var": 2.5})
    assert t.min_laplacian_var == 2.5
    with pytest.raises(ValueError, match="unknown key"):
        quality.QualityThresholds.from_dict({"min_sharpness": 1})


def test_histogram_percentile_and_laplacian_equal_the_direct_computation(frame):
    rng = np.random.default_rng(3)
    images = [
        frame,
        frame[::4, ::4],
        rng.integers(0, 4, (37, 53), dtype=np.uint8),
        np.full((5, 5), 255, np.uint8),
        rng.integers(0, 256, (1, 1), dtype=np.uint8),
    ]
    for img in images:
        for q in (0, 1, 50, 99, 99.9, 100):
            assert quality.percentile_u8(img, q) == pytest.approx(np.percentile(img, q), abs=1e-9)
    roi_img = roi.extract(frame).roi
    direct = float(cv2.Laplacian(roi_img, cv2.CV_64F).var())
    assert quality.laplacian_var(roi_img) == pytest.approx(direct, rel=1e-9)
