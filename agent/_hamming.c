/* Fused popcount(XOR) + top-k over packed codes: the C kernel of agent.gallery.
 *
 * Why C: the numpy search needs several ufunc calls per chunk (~0.5-1 us each) and numpy's
 * popcount is scalar for 32/64-bit words, so it loses to faiss at small N and costs ~100 us at
 * N = 1e5. Here one pass counts a sub-block of codes into a uint8 buffer that stays in L1,
 * returning its minimum, and only a sub-block whose minimum beats the current k-th best is
 * scanned for candidates: with random codes almost every sub-block is skipped after the first.
 *
 * Layout (agent/codes.py): codes are (n, words) C-contiguous; uint32 words for K <= 32 (one per
 * code), uint64 words beyond (one or two per code). Arrays come through the buffer protocol so
 * the module needs no numpy headers. Ties go to the lower index on every path, like the numpy
 * fallback: the gallery is scanned in index order and a candidate enters only if strictly
 * better than the current k-th.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define SUB 1024             /* codes per counted sub-block: its uint8 distances stay in L1 */
#define PASS 16384           /* codes per gallery block of a batch: stays in L2 for every probe */
#define GIL_FREE_MIN 4096    /* from this many probe x code pairs the daemon's other threads run */
#define MAX_K_ON_STACK 64
#define MAX_BITS 128          /* the longest code: no distance exceeds it */

/* Counts popcount(code ^ probe) of m codes into out and returns the minimum. */
typedef uint8_t (*count_fn)(const void *codes, const uint64_t *probe, Py_ssize_t m, uint8_t *out);

/* The bodies are inlined into one wrapper per instruction set: the builtin compiles to a libgcc
 * call on baseline x86-64, to one POPCNT instruction where the wrapper's target allows it. */
#define COUNT_BODY(load)                                          \
    uint8_t lo = 255;                                            \
    for (Py_ssize_t i = 0; i < m; i++) {                         \
        uint8_t d = (uint8_t)(load);                             \
        out[i] = d;                                              \
        lo = d < lo ? d : lo;                                    \
    }                                                            \
    return lo;

#define DEFINE_COUNTERS(suffix, attr)                                                           \
    attr static uint8_t count32_##suffix(const void *g, const uint64_t *p, Py_ssize_t m,        \
                                         uint8_t *out) {                                        \
        const uint32_t *c = g, q = (uint32_t)p[0];                                              \
        COUNT_BODY(__builtin_popcount(c[i] ^ q))                                                \
    }                                                                                           \
    attr static uint8_t count64_##suffix(const void *g, const uint64_t *p, Py_ssize_t m,        \
                                         uint8_t *out) {                                        \
        const uint64_t *c = g, q = p[0];                                                        \
        COUNT_BODY(__builtin_popcountll(c[i] ^ q))                                              \
    }                                                                                           \
    attr static uint8_t count128_##suffix(const void *g, const uint64_t *p, Py_ssize_t m,       \
                                          uint8_t *out) {                                       \
        const uint64_t *c = g, q0 = p[0], q1 = p[1];                                            \
        COUNT_BODY(__builtin_popcountll(c[2 * i] ^ q0) + __builtin_popcountll(c[2 * i + 1] ^ q1)) \
    }

DEFINE_COUNTERS(portable, )

#if defined(__x86_64__)
DEFINE_COUNTERS(popcnt, __attribute__((target("popcnt"))))

/* 32-bit codes with AVX2: a nibble lookup (pshufb) counts 32 bytes at once, two multiply-adds
 * sum each code's 4 byte counts, and two packs bring 32 codes down to 32 bytes. About 4x the
 * scalar POPCNT loop, which retires one code per cycle at best. */
__attribute__((target("avx2,popcnt"))) static uint8_t count32_avx2(const void *g,
                                                                    const uint64_t *p,
                                                                    Py_ssize_t m, uint8_t *out) {
    const uint32_t *c = g, q = (uint32_t)p[0];
    const __m256i probe = _mm256_set1_epi32((int)q), nibble = _mm256_set1_epi8(0x0f);
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                           1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    /* the packs work per 128-bit lane; this puts the four 8-code groups back in order */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i lo = _mm256_set1_epi8((char)255);
    Py_ssize_t i = 0;
    for (; i + 32 <= m; i += 32) {
        __m256i sums[4];
        for (int j = 0; j < 4; j++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(c + i + 8 * j));
            x = _mm256_xor_si256(x, probe);
            __m256i bytes = _mm256_add_epi8(
                _mm256_shuffle_epi8(table, _mm256_and_si256(x, nibble)),
                _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble)));
            sums[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, ones8), ones16);
        }
        __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(sums[0], sums[1]),
                                             _mm256_packs_epi32(sums[2], sums[3]));
        packed = _mm256_permutevar8x32_epi32(packed, order);
        _mm256_storeu_si256((__m256i *)(out + i), packed);
        lo = _mm256_min_epu8(lo, packed);
    }
    __m128i half = _mm_min_epu8(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
    half = _mm_min_epu8(half, _mm_srli_si128(half, 8));
    half = _mm_min_epu8(half, _mm_srli_si128(half, 4));
    half = _mm_min_epu8(half, _mm_srli_si128(half, 2));
    half = _mm_min_epu8(half, _mm_srli_si128(half, 1));
    uint8_t least = (uint8_t)_mm_cvtsi128_si32(half);
    for (; i < m; i++) {
        uint8_t d = (uint8_t)__builtin_popcount(c[i] ^ q);
        out[i] = d;
        least = d < least ? d : least;
    }
    return least;
}
#endif

/* [words == 1 uint32, words == 1 uint64, words == 2 uint64], chosen at import (select_impl) */
static count_fn counters[3];
static const char *impl_name;

static int select_impl(const char *name) {
    count_fn portable[3] = {count32_portable, count64_portable, count128_portable};
#if defined(__x86_64__)
    __builtin_cpu_init();
    int popcnt = __builtin_cpu_supports("popcnt"), avx2 = popcnt && __builtin_cpu_supports("avx2");
    if (name == NULL)
        name = avx2 ? "avx2" : popcnt ? "popcnt" : "portable";
    if ((strcmp(name, "avx2") == 0 && avx2) || (strcmp(name, "popcnt") == 0 && popcnt)) {
        count_fn fast[3] = {name[0] == 'a' ? count32_avx2 : count32_popcnt, count64_popcnt,
                            count128_popcnt};
        memcpy(counters, fast, sizeof(fast));
        impl_name = name[0] == 'a' ? "avx2" : "popcnt";
        return 0;
    }
#else
    if (name == NULL)
        name = "portable"; /* elsewhere (aarch64: NEON cnt) the builtin needs no target */
#endif
    if (strcmp(name, "portable") != 0)
        return -1;
    memcpy(counters, portable, sizeof(portable));
    impl_name = "portable";
    return 0;
}

/* The k best so far, ascending by (distance, index), in the caller's arrays. */
typedef struct {
    Py_ssize_t k, filled;
    int32_t *dist;
    int64_t *idx;
} Best;

static inline int32_t bound(const Best *b) { return b->filled < b->k ? 256 : b->dist[b->k - 1]; }

/* Enters (d, index) if strictly better than the k-th: later indices go after equal distances,
 * as the gallery is scanned in index order. */
static void insert(Best *b, int32_t d, Py_ssize_t index) {
    Py_ssize_t j = b->filled < b->k ? b->filled++ : b->k - 1;
    for (; j > 0 && b->dist[j - 1] > d; j--) {
        b->dist[j] = b->dist[j - 1];
        b->idx[j] = b->idx[j - 1];
    }
    b->dist[j] = d;
    b->idx[j] = index;
}

/* The candidates of one sub-block whose minimum is lo, by distance and then index: memchr is
 * vectorised, so a few calls replace a mispredicted branch per code (k = 1: one call). */
static void offer(Best *b, const uint8_t *cnt, Py_ssize_t m, Py_ssize_t base, int lo) {
    Py_ssize_t seen = 0;
    for (int v = lo; v <= MAX_BITS && v < bound(b) && seen < m; v++) {
        const uint8_t *p = cnt, *end = cnt + m;
        while (v < bound(b) && (p = memchr(p, v, (size_t)(end - p))) != NULL) {
            insert(b, v, base + (p - cnt));
            p++;
            seen++;
        }
    }
}

typedef struct {
    const char *base; /* code 0 */
    Py_ssize_t n, stride, words;
    count_fn count;
} Codes;

/* Codes s..e against one probe, into b. */
static void scan(const Codes *g, const uint64_t *probe, Py_ssize_t s, Py_ssize_t e, Best *b) {
    uint8_t cnt[SUB];
    for (Py_ssize_t i = s; i < e && bound(b) > 0; i += SUB) {
        Py_ssize_t m = e - i < SUB ? e - i : SUB;
        int lo = g->count(g->base + i * g->stride, probe, m, cnt);
        if (lo < bound(b))
            offer(b, cnt, m, i, lo);
    }
}

/* Every probe against every code. The gallery block is the outer loop so that a block read
 * from memory serves every probe; the GIL is released when the work is worth the switch. */
static void search_all(const Codes *g, const uint64_t *probes, Py_ssize_t b, Best *best) {
    PyThreadState *state = g->n * b > GIL_FREE_MIN ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t s = 0; s < g->n; s += PASS) {
        Py_ssize_t e = g->n - s < PASS ? g->n : s + PASS;
        for (Py_ssize_t r = 0; r < b; r++)
            scan(g, probes + r * g->words, s, e, &best[r]);
    }
    if (state != NULL)
        PyEval_RestoreThread(state);
}

/* Opens obj as a buffer of 4- or 8-byte integers whose format is one of `formats`. */
static int open_view(PyObject *obj, Py_buffer *v, int flags, const char *what, const char *formats) {
    if (PyObject_GetBuffer(obj, v, flags | PyBUF_FORMAT) < 0) {
        /* numpy says "ndarray is not C-contiguous": name the argument */
        if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be a %s%s array", what,
                         (flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS ? "C-contiguous" : "strided",
                         (flags & PyBUF_WRITABLE) ? ", writable" : "");
        }
        return -1;
    }
    const char *f = v->format;
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN))
        f++;
    if (f[0] == '\0' || f[1] != '\0' || strchr(formats, f[0]) == NULL ||
        (v->itemsize != 4 && v->itemsize != 8)) {
        PyErr_Format(PyExc_TypeError, "%s has format %s, itemsize %zd; expected one of '%s'",
                     what, v->format, v->itemsize, formats);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* Opens the gallery (n,) or (n, words) and the probes (b, words); fills g, probes, b. */
static int open_inputs(PyObject *codes_obj, PyObject *probe_obj, Py_buffer *cv, Py_buffer *pv,
                       Codes *g, uint64_t **probes, Py_ssize_t *b) {
    if (open_view(codes_obj, cv, PyBUF_C_CONTIGUOUS, "codes", "ILQ") < 0)
        return -1;
    /* probes are few words: any strides, copied below (a row sliced from a column is fine) */
    if (open_view(probe_obj, pv, PyBUF_STRIDES, "probe", "ILQ") < 0) {
        PyBuffer_Release(cv);
        return -1;
    }
    g->base = cv->buf;
    g->n = cv->ndim ? cv->shape[0] : 0;
    g->words = cv->ndim == 2 ? cv->shape[1] : 1;
    g->stride = g->words * cv->itemsize;
    int kind = cv->itemsize == 4 ? (g->words == 1 ? 0 : -1) : (int)g->words;
    Py_ssize_t per_probe = g->words * pv->itemsize;
    if (cv->ndim < 1 || cv->ndim > 2 || kind < 0 || kind > 2) {
        PyErr_Format(PyExc_ValueError, "codes must be (n,) or (n, words): one uint32 word or one "
                                       "or two uint64 words per code");
    } else if (pv->itemsize != cv->itemsize) {
        PyErr_Format(PyExc_TypeError, "probe words have %zd bytes, the codes' %zd", pv->itemsize,
                     cv->itemsize);
    } else if (pv->len % per_probe != 0) {
        PyErr_Format(PyExc_ValueError, "probe holds %zd words, not a multiple of %zd per code",
                     pv->len / pv->itemsize, g->words);
    } else {
        g->count = counters[kind];
        *b = pv->len / per_probe;
        /* the counters take uint64 words: 32-bit ones are widened from a contiguous copy */
        Py_ssize_t count = *b * g->words;
        *probes = PyMem_Malloc((size_t)(count + 1) * sizeof(uint64_t));
        uint32_t *narrow = cv->itemsize == 4 ? PyMem_Malloc((size_t)(count + 1) * 4) : NULL;
        void *flat = narrow != NULL ? (void *)narrow : (void *)*probes;
        if (*probes == NULL || (cv->itemsize == 4 && narrow == NULL)) {
            PyErr_NoMemory();
        } else if (PyBuffer_ToContiguous(flat, pv, pv->len, 'C') == 0) {
            for (Py_ssize_t i = 0; narrow != NULL && i < count; i++)
                (*probes)[i] = narrow[i];
            PyMem_Free(narrow);
            return 0;
        }
        PyMem_Free(narrow);
        PyMem_Free(*probes);
    }
    PyBuffer_Release(pv);
    PyBuffer_Release(cv);
    return -1;
}

PyDoc_STRVAR(topk_doc, "topk(codes, probe, k) -> [(index, distance)]: the k nearest codes to one\n"
                       "probe, ascending by distance then index (fewer when k > n).");

static PyObject *topk(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *probe_obj;
    Py_ssize_t k;
    Py_buffer cv, pv;
    Codes g;
    uint64_t *probe;
    Py_ssize_t b;
    if (!PyArg_ParseTuple(args, "OOn:topk", &codes_obj, &probe_obj, &k))
        return NULL;
    if (k < 0)
        return PyErr_Format(PyExc_ValueError, "k must be >= 0, got %zd", k);
    if (open_inputs(codes_obj, probe_obj, &cv, &pv, &g, &probe, &b) < 0)
        return NULL;
    PyObject *result = NULL;
    int32_t dist_stack[MAX_K_ON_STACK];
    int64_t idx_stack[MAX_K_ON_STACK];
    Best best = {k < g.n ? k : g.n, 0, dist_stack, idx_stack};
    if (b != 1) {
        PyErr_Format(PyExc_ValueError, "topk takes one probe, got %zd; use topk_batch", b);
        goto done;
    }
    if (best.k > MAX_K_ON_STACK) {
        best.dist = PyMem_Malloc((size_t)best.k * sizeof(int32_t));
        best.idx = PyMem_Malloc((size_t)best.k * sizeof(int64_t));
        if (best.dist == NULL || best.idx == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (best.k > 0) /* bound() reads the k-th */
        search_all(&g, probe, 1, &best);
    result = PyList_New(best.filled);
    for (Py_ssize_t j = 0; result != NULL && j < best.filled; j++) {
        PyObject *pair = Py_BuildValue("(Li)", (long long)best.idx[j], (int)best.dist[j]);
        if (pair == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, j, pair);
    }
done:
    if (best.dist != dist_stack) {
        PyMem_Free(best.dist);
        PyMem_Free(best.idx);
    }
    PyMem_Free(probe);
    PyBuffer_Release(&pv);
    PyBuffer_Release(&cv);
    return result;
}

PyDoc_STRVAR(topk_batch_doc,
             "topk_batch(codes, probes, out_idx, out_dist): the k nearest codes to each of b\n"
             "probes into out_idx (b, k) int64 and out_dist (b, k) int32; k <= n.");

static PyObject *topk_batch(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *probe_obj, *idx_obj, *dist_obj;
    Py_buffer cv, pv, iv, dv;
    Codes g;
    uint64_t *probes;
    Py_ssize_t b, k;
    if (!PyArg_ParseTuple(args, "OOOO:topk_batch", &codes_obj, &probe_obj, &idx_obj, &dist_obj))
        return NULL;
    if (open_inputs(codes_obj, probe_obj, &cv, &pv, &g, &probes, &b) < 0)
        return NULL;
    PyObject *result = NULL;
    Best *best = NULL;
    if (open_view(idx_obj, &iv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE, "out_idx", "lq") < 0)
        goto inputs;
    if (open_view(dist_obj, &dv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE, "out_dist", "il") < 0)
        goto idx;
    k = iv.ndim == 2 ? iv.shape[1] : -1;
    if (iv.ndim != 2 || iv.itemsize != 8 || iv.shape[0] != b || dv.ndim != 2 ||
        dv.itemsize != 4 || dv.shape[0] != b || dv.shape[1] != k || k > g.n) {
        PyErr_Format(PyExc_ValueError, "out_idx must be (%zd, k) int64 and out_dist (%zd, k) "
                                       "int32 with k <= n = %zd", b, b, g.n);
        goto all;
    }
    best = PyMem_Malloc((size_t)(b ? b : 1) * sizeof(Best));
    if (best == NULL) {
        PyErr_NoMemory();
        goto all;
    }
    for (Py_ssize_t r = 0; r < b; r++)
        best[r] = (Best){k, 0, (int32_t *)dv.buf + r * k, (int64_t *)iv.buf + r * k};
    if (k > 0)
        search_all(&g, probes, b, best);
    result = Py_NewRef(Py_None);
all:
    PyMem_Free(best);
    PyBuffer_Release(&dv);
idx:
    PyBuffer_Release(&iv);
inputs:
    PyMem_Free(probes);
    PyBuffer_Release(&pv);
    PyBuffer_Release(&cv);
    return result;
}

PyDoc_STRVAR(use_doc, "use(name): switch the popcount kernel ('avx2', 'popcnt', 'portable');\n"
                      "for tests of every variant on one machine. Returns the previous name.");

static PyObject *use(PyObject *self, PyObject *args) {
    const char *name, *previous = impl_name;
    if (!PyArg_ParseTuple(args, "s:use", &name))
        return NULL;
    if (select_impl(name) < 0)
        return PyErr_Format(PyExc_ValueError, "popcount kernel %s is not available here", name);
    return PyUnicode_FromString(previous);
}

static PyObject *impl(PyObject *self, PyObject *unused) { return PyUnicode_FromString(impl_name); }

static PyMethodDef methods[] = {
    {"topk", topk, METH_VARARGS, topk_doc},
    {"topk_batch", topk_batch, METH_VARARGS, topk_batch_doc},
    {"use", use, METH_VARARGS, use_doc},
    {"impl", impl, METH_NOARGS, "impl() -> the popcount kernel in use"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent._hamming",
                                    "Fused popcount(XOR) top-k search over packed codes.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hamming(void) {
    select_impl(NULL);
    return PyModule_Create(&module);
}
