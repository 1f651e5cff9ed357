"""Palm ROI search on synthetic full-hand frames whose ground truth is exact."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent import roi

hands = pytest.importorskip("export.synth.hands")

GOAL_FOUND = 0.95
MAX_CENTRE_ERR = 0.05  # of the ROI side
MAX_ANGLE_ERR = 5.0  # degrees


def _errors(found: roi.RoiResult, truth: dict) -> tuple[float, float]:
    centre = np.hypot(*(np.asarray(found.square.centre) - truth["centre"])) / truth["side"]
    angle = abs((found.square.angle_deg - truth["angle_deg"] + 180) % 360 - 180)
    return float(centre), float(angle)


def test_roi_found_accurately_on_medium_frames():
    n, good, centres, angles, hand_ok = 100, 0, [], [], 0
    for i in range(n):
        frame, truth = hands.render_hand_frame(
            i % 25, i // 25, seed=11, level="medium", hand=("left", "right")[i % 2]
        )
        found = roi.extract(frame)
        if found.roi is None:
            continue
        c, a = _errors(found, truth)
        centres.append(c)
        angles.append(a)
        hand_ok += found.hand == truth["hand"]
        good += c <= MAX_CENTRE_ERR and a <= MAX_ANGLE_ERR
    print(
        f"roi_medium frames={n} found_within_goal={good / n:.3f} detected={len(centres)} "
        f"centre_err_median={np.median(centres):.4f} "
        f"centre_err_p95={np.percentile(centres, 95):.4f} "
        f"angle_err_median={np.median(angles):.3f} angle_err_p95={np.percentile(angles, 95):.3f} "
        f"hand_correct={hand_ok}/{len(centres)}"
    )
    assert good / n >= GOAL_FOUND
    assert hand_ok >= 0.95 * len(centres)


def test_rotating_the_frame_rotates_the_square_and_keeps_the_roi():
    frame, _ = hands.render_hand_frame(3, 0, seed=5, level="easy", size=(480, 480))
    base = roi.extract(frame)
    turned = roi.extract(cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE))
    assert base.roi is not None and turned.roi is not None
    diff = (turned.square.angle_deg - base.square.angle_deg) % 360
    assert abs(diff - 90) < 2.0
    assert abs(turned.square.side - base.square.side) < 0.02 * base.square.side
    corr = np.corrcoef(base.roi.ravel().astype(float), turned.roi.ravel().astype(float))[0, 1]
    assert corr > 0.9


def test_square_convention():
    # fingers straight up: valleys on a horizontal line, palm below
    sq = roi.square_from_valleys([100, 100], [160, 100], palm_point=[130, 200])
    assert sq.angle_deg == pytest.approx(0.0)
    assert sq.side == pytest.approx(roi.SIDE_RATIO * 60)
    assert sq.centre == pytest.approx((130, 100 + roi.GAP_RATIO * 60 + sq.side / 2))
    tl, tr, _, bl = sq.corners()
    assert tl[1] < bl[1] and tl[0] < tr[0]  # top-left is towards the fingers, on the left
    # the same hand turned 30 degrees clockwise on screen (y points down)
    a = np.radians(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    sq30 = roi.square_from_valleys(rot @ [100, 100], rot @ [160, 100], rot @ [130, 200])
    assert sq30.angle_deg == pytest.approx(30.0)
    np.testing.assert_allclose(sq30.corners(), sq.corners() @ rot.T, atol=1e-9)
    # which valley comes first does not matter
    assert roi.square_from_valleys([160, 100], [100, 100], [130, 200]) == sq


def test_cut_is_the_inverse_of_placing_an_image_on_the_square():
    sq = roi.RoiSquare((200.0, 150.0), 90.0, 20.0)
    pattern = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    pattern = cv2.GaussianBlur(pattern, (0, 0), 2)
    m = cv2.getAffineTransform(
        np.float32([[0, 0], [64, 0], [64, 64]]), sq.corners()[:3].astype(np.float32)
    )
    frame = cv2.warpAffine(pattern, m, (400, 300))
    back = roi.cut(frame, sq, 64)
    assert np.abs(back[4:-4, 4:-4].astype(int) - pattern[4:-4, 4:-4]).mean() < 3


def test_failures_are_named():
    empty = np.full((240, 320), 12, np.uint8)
    assert roi.extract(empty).reason == "no_hand"
    fist = empty.copy()
    cv2.ellipse(fist, (160, 120), (70, 90), 0, 0, 360, 180, -1)
    assert roi.extract(fist).reason == "fingers_not_found"
    frame, _ = hands.render_hand_frame(0, 0, seed=1)
    assert roi.extract(frame).reason is None


def test_already_roi_frames_skip_the_search():
    img = np.random.default_rng(1).integers(0, 255, (160, 160), dtype=np.uint8)
    res = roi.extract(img, roi.RoiConfig(already_roi=True, out_size=128))
    assert res.roi.shape == (128, 128) and res.reason is None


def test_mirror_left_flips_left_hands_only():
    frame, truth = hands.render_hand_frame(2, 0, seed=4, hand="left")
    plain = roi.extract(frame)
    mirrored = roi.extract(frame, roi.RoiConfig(mirror_left=True))
    assert plain.hand == truth["hand"] == "left"
    np.testing.assert_array_equal(mirrored.roi, plain.roi[:, ::-1])


def test_search_on_a_reduced_copy_agrees_with_the_full_resolution_search():
    for i in range(12):
        frame, truth = hands.render_hand_frame(i, 1, seed=6, level="medium")
        fast = roi.extract(frame)
        full = roi.extract(frame, roi.RoiConfig(search_px=0))
        assert fast.mask.shape == (240, 320) and full.mask.shape == (480, 640)
        shift = np.hypot(*np.subtract(fast.square.centre, full.square.centre))
        assert shift <= 0.03 * full.square.side
        assert abs(fast.square.angle_deg - full.square.angle_deg) <= 2.0
        assert abs(fast.square.side - full.square.side) <= 0.05 * full.square.side
        assert fast.hand == full.hand == truth["hand"]
        assert fast.roi.shape == full.roi.shape == (128, 128)  # cut at full resolution


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (1920, 1080), (1000, 750), (500, 375)])
def test_a_point_of_the_search_copy_maps_back_to_its_frame_pixel(size):
    # pyramid halvings, halvings then an area resize, an area resize alone: the centroid of a
    # blob found on the copy lands where it is in the frame (a pyramid pixel p is centred on
    # pixel 2p below it, an area pixel q on the middle of the pixels it averages)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, s = 0.37 * w + 0.3, 0.61 * h + 0.7, w / 20
    blob = np.clip(200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)), 0, 255)
    frame = blob.round().astype(np.uint8)
    copy = roi._SearchCopy.of(frame, 320)
    assert max(copy.image.shape) == 320

    def centroid(img: np.ndarray) -> np.ndarray:
        m = cv2.moments(img.astype(np.float32))
        return np.array([m["m10"], m["m01"]]) / m["m00"]

    np.testing.assert_allclose(copy.to_frame(centroid(copy.image)), centroid(frame), atol=0.1)


def test_large_frames_meet_the_goal_through_the_reduced_search():
    checked = 0
    for i in range(8):
        frame, truth = hands.render_hand_frame(i, 0, seed=9, level="medium", size=(1280, 960))
        if roi.extract(frame, roi.RoiConfig(search_px=0)).roi is None:
            continue  # the renderer's hand is unusable at any resolution
        found = roi.extract(frame)
        assert found.mask.shape == (240, 320)  # a quarter of the frame each way
        c, a = _errors(found, truth)
        assert c <= MAX_CENTRE_ERR and a <= MAX_ANGLE_ERR
        checked += 1
    assert checked >= 6


def test_recut_gives_the_other_frame_of_a_capture_what_its_own_search_would():
    # the renderer draws a capture's print and vein frames in one pose, as one sensor would
    for identity, hand in ((0, "right"), (3, "left")):
        config = roi.RoiConfig(mirror_left=True)
        found = roi.extract(hands.render_hand_frame(identity, 1, seed=2, hand=hand)[0], config)
        vein, _ = hands.render_hand_frame(identity, 1, seed=2, hand=hand, modality="vein")
        own = roi.extract(vein, config)
        shared = roi.recut(vein, found, config)
        assert shared.square == own.square and shared.hand == own.hand == hand
        np.testing.assert_array_equal(shared.roi, own.roi)


def test_recut_searches_the_frame_itself_when_the_first_search_failed():
    failed = roi.extract(np.zeros((480, 640), np.uint8))
    assert failed.square is None
    frame, truth = hands.render_hand_frame(1, 0, seed=3)
    again = roi.recut(frame, failed)
    assert again.square is not None
    assert _errors(again, truth)[0] < MAX_CENTRE_ERR
