"""K-bit co-hash codes: the one definition of bit order shared by device, training and bundle.

Bit order (format version 1): output k of the network becomes bit ``k % W`` of word ``k // W``
(least significant bit first), where ``W`` is the word width. Codes of K <= 32 bits are one
``uint32`` word (a 16-bit code uses the low 16 bits); wider codes are ``ceil(K / 64)`` ``uint64``
words. So a 32-bit code read as an integer is ``sum(bit_k << k)``; written out MSB-first it is the
sign pattern reversed. Every packed array has shape ``(n, words)``.

Hamming distance is popcount(XOR). numpy >= 2's ``bitwise_count`` vectorises it over a gallery;
for one pair, Python's ``int.bit_count`` is faster (no array overhead), so 1:1 helpers use ints.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (16, 32, 64, 128)
BIT_ORDER = "lsb0-words"  # the manifest names this so a bundle cannot be read with another order


def word_dtype(bits: int) -> np.dtype:
    """uint32 words for codes up to 32 bits (the paper's size), uint64 words beyond."""
    check_bits(bits)
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def n_words(bits: int) -> int:
    check_bits(bits)
    return 1 if bits <= 32 else bits // 64


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"code length {bits} is not supported; use one of {SUPPORTED_BITS}")


def pack_bits(bits_array: np.ndarray) -> np.ndarray:
    """Pack a boolean (n, K) array into (n, words) codes in the project's bit order."""
    b = np.asarray(bits_array, dtype=bool)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2:
        raise ValueError(f"expected (n, K) bits, got shape {b.shape}")
    k = b.shape[1]
    dtype = word_dtype(k)
    width = dtype.itemsize * 8
    words = n_words(k)
    padded = np.zeros((b.shape[0], words * width), dtype=bool)
    padded[:, :k] = b
    # packbits with little bit order gives bytes LSB-first; little-endian bytes make the words.
    as_bytes = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view(dtype.newbyteorder("<")).astype(dtype, copy=False)


def pack(outputs: np.ndarray, zero_point: float = 0.0) -> np.ndarray:
    """Real (or quantized) network outputs (n, K) -> packed codes; bit k = output k > zero_point.

    ``zero_point`` is 0 for float outputs; for an int8 model it is the output tensor's zero point,
    since the quantized value of 0.0 is the zero point, not 0.
    """
    out = np.asarray(outputs)
    if out.ndim == 1:
        out = out[None, :]
    return pack_bits(out > zero_point)


def unpack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed (n, words) codes -> boolean (n, K), the inverse of :func:`pack_bits`."""
    c = np.ascontiguousarray(np.asarray(codes, dtype=word_dtype(bits)).reshape(-1, n_words(bits)))
    as_bytes = c.astype(c.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits].astype(bool)


def to_int(code: np.ndarray) -> int:
    """One packed code (words,) -> a Python int (word i holds bits i*W .. i*W+W-1)."""
    words = np.asarray(code).reshape(-1)
    width = words.dtype.itemsize * 8
    value = 0
    for i, w in enumerate(words.tolist()):
        value |= int(w) << (i * width)
    return value


def from_int(value: int, bits: int) -> np.ndarray:
    """A Python int -> one packed code of shape (words,)."""
    dtype = word_dtype(bits)
    width = dtype.itemsize * 8
    mask = (1 << width) - 1
    return np.array([(value >> (i * width)) & mask for i in range(n_words(bits))], dtype=dtype)


def hamming(probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Distances from one probe (words,) to every gallery code (n, words), as int32 (n,)."""
    p = np.asarray(probe).reshape(-1)
    g = np.asarray(gallery)
    if g.ndim == 1:
        g = g[:, None]
    d = np.bitwise_count(np.bitwise_xor(g, p))
    return d.sum(axis=1, dtype=np.int32) if d.shape[1] > 1 else d[:, 0].astype(np.int32)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise distances between codes a (n, words) and b (m, words): (n, m) int32."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.int32)
    for w in range(a.shape[1]):
        out += np.bitwise_count(np.bitwise_xor(a[:, w, None], b[None, :, w]))
    return out


def hamming_int(a: int, b: int) -> int:
    """1:1 distance on Python ints: the fastest form for a single pair."""
    return (a ^ b).bit_count()
