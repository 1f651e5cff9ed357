import cv2
import numpy as np
import pytest

from agent.preprocess import DEFAULT_SPEC, PreprocessSpec, normalise, preprocess


def test_grey_roi_is_repeated_and_normalised():
    roi = np.full((200, 200), 255, np.uint8)
    x = preprocess(roi)
    assert x.shape == (3, 128, 128) and x.dtype == np.float32
    expected = (1.0 - np.array(DEFAULT_SPEC.mean)) / np.array(DEFAULT_SPEC.std)
    assert np.allclose(x[:, 0, 0], expected, atol=1e-6)


def test_band_order_is_kept():
    roi = np.zeros((128, 128, 3), np.uint8)
    roi[..., 2] = 255
    x = preprocess(roi)
    assert x[2].mean() > x[0].mean()


def test_spec_roundtrip_and_errors():
    spec = PreprocessSpec(input_size=64)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((128, 128), np.float32))
    with pytest.raises(ValueError, match="mean/std"):
        PreprocessSpec.from_dict({"channels": 1, "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]})


def test_uint8_lookup_equals_the_float_arithmetic_bit_for_bit():
    rng = np.random.default_rng(2)
    for spec in (DEFAULT_SPEC, PreprocessSpec(channels=1, mean=(0.5,), std=(0.25,))):
        batch = rng.integers(0, 256, (3, 128, 128, spec.channels), dtype=np.uint8)
        np.testing.assert_array_equal(
            normalise(batch, spec), normalise(batch.astype(np.float32), spec)
        )
    grey = rng.integers(0, 256, (150, 170), dtype=np.uint8)
    x = preprocess(grey)
    resized = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA)
    as_float = np.repeat(resized[:, :, None], 3, axis=2).astype(np.float32)
    np.testing.assert_array_equal(x, normalise(as_float))
    assert x.flags.c_contiguous and x.dtype == np.float32
