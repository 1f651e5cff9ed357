"""Synthetic full-hand frames: deterministic, inside the frame, truth matching the texture."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from agent import roi
from export.synth import make_identity, render_capture
from export.synth.hands import render_hand_frame, write_hand_frames


def test_frames_are_deterministic_and_vary_per_sample():
    a, ta = render_hand_frame(1, 0, seed=4)
    b, tb = render_hand_frame(1, 0, seed=4)
    c, tc = render_hand_frame(1, 1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert ta == tb
    assert a.shape == (480, 640) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - c).mean() > 5 and ta["centre"] != tc["centre"]


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_hand_lies_inside_the_frame_on_a_dark_background(level):
    for i in range(4):
        frame, truth = render_hand_frame(i, 0, seed=1, level=level, hand=("left", "right")[i % 2])
        mask = roi.segment(frame)
        assert mask.any()
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert not border.any()
        corners = np.asarray(truth["corners"])
        assert (corners >= 0).all() and (corners[:, 0] < 640).all() and (corners[:, 1] < 480).all()
        # the ROI lies on the lit palm
        inside = mask[tuple(np.round(truth["centre"][::-1]).astype(int))]
        assert inside == 255 and truth["hand"] == ("left", "right")[i % 2]


def test_truth_follows_the_roi_convention():
    _, t = render_hand_frame(2, 3, seed=9, level="medium")
    v = np.asarray(t["valleys"])
    # valleys are stored rounded to 1/1000 px
    assert t["side"] == pytest.approx(roi.SIDE_RATIO * np.hypot(*(v[1] - v[0])), rel=1e-4)
    sq = roi.RoiSquare(tuple(t["centre"]), t["side"], t["angle_deg"])
    np.testing.assert_allclose(sq.corners(), t["corners"], atol=1e-2)


def test_cutting_the_true_square_gives_the_capture_back():
    frame, t = render_hand_frame(5, 2, seed=6, level="easy", modality="vein")
    sq = roi.RoiSquare(tuple(t["centre"]), t["side"], t["angle_deg"])
    cut = roi.cut(frame, sq, 128).astype(float)
    ident = make_identity(5, 6, "easy")
    tex = render_capture(ident, 2, 6, "easy", size=128).vein_roi.astype(float)
    other = render_capture(make_identity(6, 6, "easy"), 2, 6, "easy", size=128).vein_roi
    inner = np.s_[12:-12, 12:-12]
    same = np.corrcoef(cut[inner].ravel(), tex[inner].ravel())[0, 1]
    diff = np.corrcoef(cut[inner].ravel(), other[inner].astype(float).ravel())[0, 1]
    assert same > 0.6 and same > diff + 0.3, (same, diff)


def test_write_hand_frames_layout_and_workers(tmp_path):
    serial = write_hand_frames(tmp_path / "a", ids=2, samples=2, level="medium", seed=1)
    pooled = write_hand_frames(tmp_path / "b", ids=2, samples=2, level="medium", seed=1, workers=2)
    assert len(serial) == len(pooled) == 8  # 2 ids x 2 samples x print/vein
    for p, q in zip(serial, pooled, strict=True):
        assert p.relative_to(tmp_path / "a") == q.relative_to(tmp_path / "b")
        np.testing.assert_array_equal(cv2.imread(str(p), -1), cv2.imread(str(q), -1))
        truth = json.loads(p.with_suffix(".json").read_text())
        assert truth["modality"] == p.parent.name
        assert (truth["identity"], truth["sample"]) == (int(p.stem[:4]), int(p.stem[5:]))
