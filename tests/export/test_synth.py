"""Synthetic palms: determinism, shared pose, identity signal and difficulty ordering."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from export.synth import (
    LEVELS,
    generate_arrays,
    make_identity,
    pose_matrix,
    render_capture,
    write_dataset,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_byte_identical_files_for_any_worker_count(tmp_path):
    a = write_dataset("polyu", tmp_path / "a", 3, 2, "medium", seed=7, workers=0)
    b = write_dataset("polyu", tmp_path / "b", 3, 2, "medium", seed=7, workers=2)
    c = write_dataset("polyu", tmp_path / "c", 3, 2, "medium", seed=8, workers=0)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 3 * 2 * 4 + 1
    assert fa == fb
    images = [k for k in fa if k.endswith(".jpg")]
    assert all(fa[k] != fc[k] for k in images), "another seed must give other images"


def test_identity_is_a_function_of_index_and_seed():
    a, b = make_identity(4, 1), make_identity(4, 1)
    assert np.array_equal(a.principal_ctrl, b.principal_ctrl)
    assert np.array_equal(a.vein_nodes, b.vein_nodes)
    assert not np.array_equal(a.vein_nodes, make_identity(5, 1).vein_nodes)
    assert not np.array_equal(a.secondary_ctrl, make_identity(4, 2).secondary_ctrl)
    # Murray's law: a vessel that branches is at least as wide as each of its branches
    parent = a.vein_parent[a.vein_parent >= 0]
    child = np.flatnonzero(a.vein_parent >= 0)
    assert np.all(a.vein_radius[parent] >= a.vein_radius[child] - 1e-9)
    assert a.vein_radius.max() > 2 * a.vein_radius.min()


def test_arrays_shapes_and_bands():
    p, v = generate_arrays(2, 3, "easy", seed=0, print_bands=3)
    assert p.shape == (2, 3, 128, 128, 3) and p.dtype == np.uint8
    assert v.shape == (2, 3, 128, 128) and v.dtype == np.uint8
    # the bands are different views of one print: correlated, not equal
    r, b = p[0, 0, ..., 0].astype(float), p[0, 0, ..., 2].astype(float)
    assert not np.array_equal(r, b)
    assert np.corrcoef(_highpass(r).ravel(), _highpass(b).ravel())[0, 1] > 0.3


def _highpass(img):
    img = np.asarray(img, np.float32)
    return img - cv2.GaussianBlur(img, (0, 0), 3.0)


def _ecc(template, moving):
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    a = cv2.GaussianBlur(template.astype(np.float32), (0, 0), 1.5)
    b = cv2.GaussianBlur(moving.astype(np.float32), (0, 0), 1.5)
    _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE, crit, None, 5)
    return warp


def test_print_and_vein_of_a_capture_share_the_pose():
    """Measured in the images: the motion between two captures is the same in the print and in
    the vein, and it is the motion the pose dicts describe."""
    rigid = replace(
        LEVELS["medium"],
        rotation_deg=5.0,
        shift_frac=0.04,
        scale_frac=0.04,
        elastic_px=(0.0, 0.0),
        crease_jitter_frac=0.0,
        secondary_drop=0.0,
        vein_drop=0.0,
        vein_jitter_frac=0.0,
    )
    ident = make_identity(3, seed=11)
    a = render_capture(ident, 0, 11, rigid)
    b = render_capture(ident, 1, 11, rigid)
    assert a.pose["rotation_deg"] != b.pose["rotation_deg"]

    def to_px(pose):  # canonical -> ROI pixels, 3×3
        m = np.vstack([pose_matrix(pose), [0, 0, 1]])
        return np.array([[128, 0, -0.5], [0, 128, -0.5], [0, 0, 1]]) @ m

    expected = (to_px(b.pose) @ np.linalg.inv(to_px(a.pose)))[:2]
    w_print = _ecc(a.print_pattern, b.print_pattern)
    w_vein = _ecc(a.vein_pattern, b.vein_pattern)
    centre = np.array([64.0, 64.0, 1.0])
    corners = np.array([[16, 16, 1], [112, 16, 1], [16, 112, 1], [112, 112, 1], centre])
    for w in (w_print, w_vein):
        assert np.abs(corners @ w.T - corners @ expected.T).max() < 1.0
    assert np.abs(corners @ w_print.T - corners @ w_vein.T).max() < 1.0


def test_larger_rendering_is_the_same_capture():
    ident = make_identity(0, seed=3)
    small = render_capture(ident, 2, 3, "medium", size=128)
    big = render_capture(ident, 2, 3, "medium", size=256)
    assert big.print_roi.shape == (256, 256) and big.vein_roi.shape == (256, 256)
    assert big.pose == small.pose
    for s, b in ((small.print_pattern, big.print_pattern), (small.vein_pattern, big.vein_pattern)):
        down = cv2.resize(b, (128, 128), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(s.ravel(), down.ravel())[0, 1] > 0.8


def _distances(images):
    """1 − cosine of 64×64 high-passed images: genuine and impostor distances, all pairs."""
    ids, samples = images.shape[:2]
    f = np.stack(
        [
            _highpass(cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA)).ravel()
            for im in images.reshape(-1, 128, 128)
        ]
    )
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d = 1 - f @ f.T
    lab = np.repeat(np.arange(ids), samples)
    upper = np.triu(np.ones_like(d, dtype=bool), 1)
    same = lab[:, None] == lab[None, :]
    return d[same & upper], d[~same & upper]


@pytest.mark.parametrize("modality", [0, 1])
def test_levels_differ_in_variation_and_keep_the_identity(modality):
    genuine = {}
    for name in ("easy", "medium", "hard"):
        images = generate_arrays(12, 3, name, seed=5)[modality]
        gen, imp = _distances(images)
        genuine[name] = gen.mean()
        if name != "hard":  # captures of one hand are closer than captures of two hands
            assert gen.mean() < imp.mean()
    assert genuine["easy"] < genuine["medium"] < genuine["hard"]
