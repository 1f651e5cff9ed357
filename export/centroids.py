"""Identity hash centroids: one balanced ±1 code of K bits per identity, shared by both modalities.

The first min(2K, n) rows are the Hadamard rows H_K and −H_K (pairwise distance K/2, or K between
a row and its negation). More identities need more codes. Instead of drawing random balanced codes,
which at 32 bits and hundreds of identities often leaves two identities a few bits apart, the
extra rows are balanced codewords of an extended binary BCH code (a code with a guaranteed minimum
distance, e.g. [32, 11, 12]), picked farthest-first. Its coordinates are ordered by field element
so that it contains the Hadamard rows, and the greedy pick checks distances to them anyway. The
seed only breaks ties, so the construction is deterministic and reproducible from (n, K, seed).
"""

from __future__ import annotations

import numpy as np

from agent.codes import check_bits, hamming, hamming_matrix, pack_bits

# primitive polynomials of GF(2^m), as bit masks, for the code lengths K = 2^m we support
_PRIMITIVE = {4: 0b10011, 5: 0b100101, 6: 0b1000011, 7: 0b10001001}
_MAX_DIM = 16  # enumerate at most 2^16 codewords


def hadamard(k: int) -> np.ndarray:
    """Sylvester Hadamard matrix H_k (k a power of two) as int8 ±1: H[r, c] = (-1)^popcount(r&c)."""
    r = np.arange(k)
    parity = np.bitwise_count(r[:, None] & r[None, :]) & 1
    return (1 - 2 * parity).astype(np.int8)


def _gf_tables(m: int) -> np.ndarray:
    """exp[i] = α^i as an m-bit integer, for i in 0 .. 2^m − 2."""
    n = (1 << m) - 1
    exp = np.zeros(n, dtype=np.int64)
    v = 1
    for i in range(n):
        exp[i] = v
        v <<= 1
        if v >> m:
            v ^= _PRIMITIVE[m]
    return exp


def _gf_mul(a: int, b: int, m: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a >> m:
            a ^= _PRIMITIVE[m]
    return out


def _poly_mul_gf2(a: int, b: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
    return out


def _bch_generator(m: int, designed: int) -> int:
    """Generator polynomial (bit mask) of the narrow-sense primitive BCH code, length 2^m − 1."""
    n = (1 << m) - 1
    exp = _gf_tables(m)
    g, done = 1, set()
    for i in range(1, designed):
        if i in done:
            continue
        coset, j = [], i
        while j not in coset:
            coset.append(j)
            j = (2 * j) % n
        done.update(coset)
        # minimal polynomial: prod over the coset of (x + α^j); coefficients end up in GF(2)
        poly = [1]  # coefficients in GF(2^m), lowest degree first
        for j in coset:
            root = int(exp[j])
            nxt = [0] * (len(poly) + 1)
            for d, c in enumerate(poly):
                nxt[d + 1] ^= c
                nxt[d] ^= _gf_mul(c, root, m)
            poly = nxt
        g = _poly_mul_gf2(g, sum(int(c) << d for d, c in enumerate(poly)))
    return g


def bch_codewords(k_bits: int, designed: int) -> np.ndarray | None:
    """All codewords of the extended BCH code of length ``k_bits`` as bool (N, k_bits).

    Column c holds the position of field element c (column 0: the parity bit), the order in which
    the Sylvester Hadamard rows are the first-order Reed-Muller codewords. None if the code has
    more than 2^16 codewords.
    """
    m = k_bits.bit_length() - 1
    n = k_bits - 1
    g = _bch_generator(m, designed)
    dim = n - (g.bit_length() - 1)
    if dim > _MAX_DIM:
        return None
    gen = np.array([[(g << s) >> p & 1 for p in range(n)] for s in range(dim)], dtype=np.uint8)
    msgs = (np.arange(1 << dim)[:, None] >> np.arange(dim)[None, :]) & 1
    cyclic = (msgs @ gen) & 1
    words = np.zeros((cyclic.shape[0], k_bits), dtype=bool)
    words[:, _gf_tables(m)] = cyclic.astype(bool)
    words[:, 0] = cyclic.sum(axis=1) & 1
    return words


def _farthest_first(chosen: np.ndarray, pool: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Greedily add ``count`` pool rows, each the one farthest (min distance) from those chosen."""
    bits = pool.shape[1]
    pool_codes = pack_bits(pool)
    mind = np.full(len(pool), bits + 1, dtype=np.int32)
    for code in pack_bits(chosen):
        np.minimum(mind, hamming(code, pool_codes), out=mind)
    mind[mind == 0] = -1  # already chosen
    priority = np.random.default_rng(seed).permutation(len(pool))
    picked = []
    for _ in range(count):
        best = np.flatnonzero(mind == mind.max())
        i = int(best[np.argmin(priority[best])])
        if mind[i] < 0:
            raise ValueError(f"only {len(picked)} distinct codes available, {count} needed")
        picked.append(i)
        np.minimum(mind, hamming(pool_codes[i], pool_codes), out=mind)
        mind[i] = -1
    return pool[picked]


def _candidate_pools(bits: int, seed: int) -> list[np.ndarray]:
    """Balanced codewords of each extended BCH code of this length, largest distance first."""
    pools = []
    m = bits.bit_length() - 1
    for designed in range((1 << (m - 1)) - 3, 2, -2):
        words = bch_codewords(bits, designed)
        if words is None:
            break
        pools.append(words[words.sum(axis=1) == bits // 2])
    rng = np.random.default_rng(seed)
    rand = np.zeros((4096, bits), dtype=bool)
    for row in rand:
        row[rng.permutation(bits)[: bits // 2]] = True
    pools.append(np.unique(rand, axis=0))
    return pools


def make_centroids(n: int, bits: int, seed: int = 0) -> np.ndarray:
    """(n, bits) int8 ±1 centroids; row i belongs to label index i."""
    check_bits(bits)
    h = hadamard(bits)
    base = np.concatenate([h, -h])[:n]
    if n <= len(base):
        return base.copy()
    chosen = base > 0
    need = n - len(base)
    best, best_key = None, None
    taken = {row.tobytes() for row in chosen}
    for pool in _candidate_pools(bits, seed):
        pool = pool[[row.tobytes() not in taken for row in pool]]
        if len(pool) < need:
            continue
        extra = _farthest_first(chosen, pool, need, seed)
        cand = np.concatenate([chosen, extra])
        key = distance_stats(cand)["min"]
        if best_key is None or key > best_key:
            best, best_key = cand, key
    if best is None:
        raise ValueError(f"cannot build {n} distinct balanced {bits}-bit centroids; use more bits")
    return np.where(best, 1, -1).astype(np.int8)


def distance_stats(codes: np.ndarray) -> dict[str, float]:
    """Min and mean pairwise Hamming distance of ±1 or bool codes (n, K)."""
    b = np.asarray(codes) > 0
    d = hamming_matrix(pack_bits(b), pack_bits(b))
    iu = np.triu_indices(len(b), k=1)
    return {"min": int(d[iu].min()), "mean": float(d[iu].mean())}
