import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import codes


@pytest.mark.parametrize("bits", codes.SUPPORTED_BITS)
def test_pack_unpack_roundtrip_and_order(bits):
    rng = np.random.default_rng(bits)
    out = rng.standard_normal((50, bits)).astype(np.float32)
    packed = codes.pack(out)
    assert packed.shape == (50, codes.n_words(bits))
    assert packed.dtype == codes.word_dtype(bits)
    assert np.array_equal(codes.unpack(packed, bits), out > 0)
    # bit k of the integer form is output k
    for row, p in zip(out, packed, strict=True):
        value = codes.to_int(p)
        assert [(value >> k) & 1 for k in range(bits)] == [int(v > 0) for v in row]
        assert np.array_equal(codes.from_int(value, bits), p)


def test_zero_point_for_quantized_outputs():
    q = np.full((1, 16), 5, dtype=np.int8)
    q[0, :4] = [-3, 5, 6, 7]
    assert codes.unpack(codes.pack(q, zero_point=5), 16)[0, :4].tolist() == [0, 0, 1, 1]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(codes.SUPPORTED_BITS), seed=st.integers(0, 2**32 - 1))
def test_hamming_equals_int_bit_count(bits, seed):
    rng = np.random.default_rng(seed)
    a = codes.pack_bits(rng.random((7, bits)) > 0.5)
    b = codes.pack_bits(rng.random((11, bits)) > 0.5)
    ref = np.array([[(codes.to_int(x) ^ codes.to_int(y)).bit_count() for y in b] for x in a])
    assert np.array_equal(codes.hamming_matrix(a, b), ref)
    for i, x in enumerate(a):
        assert np.array_equal(codes.hamming(x, b), ref[i])
        assert codes.hamming_int(codes.to_int(x), codes.to_int(b[0])) == ref[i, 0]


def test_unsupported_length_is_a_clear_error():
    with pytest.raises(ValueError, match="not supported"):
        codes.pack(np.zeros((1, 24)))
