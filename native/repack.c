/*
 * edgerun native kernels: the repacked copies (layout in repack.h) -- their sizes, their builders
 * and the registry the matmul looks them up in. Portable C; the kernels that read the copies are
 * in arch/x86/repack.c and reached through the kernel table (er_type_traits_t.repack).
 *
 * Lookup: a lock-free open-addressing table keyed by the row-major matrix's address; fused_rows
 * asks it on each call. The Python side registers a copy for as long as the matrix array lives
 * (edgerun/backends/native.py). The exported names keep the word "tiles" (er_tiles_*): they are
 * the binding's contract.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "repack.h"

/* bytes of the repacked copy of an N x K matrix of type qt: 0 when it gets none (other types, a
 * K that is not a whole number of layout units, under 16 rows, or no AVX-512 VNNI kernel on this CPU) */
ER_API int64_t er_tiles_size(int qt, int N, int K) {
    const er_type_traits_t *t = er_traits(er_kern(), qt);
    if (!t || !t->repack_make || K <= 0 || N < 16 || er_isa_max() < ISA_AVX512VNNI) return 0;
    if (K % t->repack_unit_k) return 0;
    return (int64_t)(N / 16) * (K / t->repack_unit_k) * t->repack_unit_bytes;
}


void repack_make_q4_K(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) {
    const int nsb = K / 256;
    for (int t = 0; t < N / 16; t++)
        for (int i = 0; i < nsb; i++) {
            uint8_t *o = out + ((size_t)t * nsb + i) * ER_REPACK_Q4_K_TB;
            for (int r = 0; r < 16; r++) {
                const uint8_t *blk = W + (size_t)(16 * t + r) * rb + (size_t)i * sizeof(block_q4_K);
                const uint8_t *sc = blk + 4, *qs = blk + 16;
                memcpy(o + 2 * r, blk, 2);
                memcpy(o + 32 + 2 * r, blk + 2, 2);
                for (int j = 0; j < 8; j++) {
                    const uint8_t s6 = j < 4 ? sc[j] & 63 : (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
                    const uint8_t m6 = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
                    o[64 + 16 * j + r] = s6;
                    o[192 + 32 * (j / 2) + 2 * r + (j & 1)] = m6;
                }
                for (int c = 0; c < 4; c++)
                    for (int j = 0; j < 8; j++) memcpy(o + 320 + 512 * c + 64 * j + 4 * r, qs + 32 * c + 4 * j, 4);
            }
        }
}

void repack_make_q6_K(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) {
    const int nsb = K / 256;
    for (int t = 0; t < N / 16; t++)
        for (int i = 0; i < nsb; i++) {
            uint8_t *o = out + ((size_t)t * nsb + i) * ER_REPACK_Q6_K_TB;
            memset(o, 0, ER_REPACK_Q6_K_TB);
            for (int r = 0; r < 16; r++) {
                const block_q6_K *bk = (const block_q6_K *)(W + (size_t)(16 * t + r) * rb) + i;
                uint8_t u[256];
                for (int h = 0; h < 2; h++) /* the 6-bit values, q + 32, in order */
                    for (int l = 0; l < 32; l++) {
                        const uint8_t *ql = bk->ql + 64 * h, *qh = bk->qh + 32 * h;
                        u[128 * h + l] = (uint8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
                        u[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                        u[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                        u[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                    }
                memcpy(o + 2 * r, &bk->d, 2);
                for (int sb = 0; sb < 16; sb++) o[32 + 16 * sb + r] = (uint8_t)bk->scales[sb];
                for (int v = 0; v < 64; v++)
                    for (int e = 0; e < 4; e++) {
                        const int val = u[4 * v + e], bit = 4 * r + e;
                        uint8_t *m = o + 288 + 16 * v;
                        if (val & 16) m[bit / 8] |= (uint8_t)(1u << (bit % 8));
                        if (val & 32) m[8 + bit / 8] |= (uint8_t)(1u << (bit % 8));
                        o[1312 + 64 * (v % 32) + 4 * r + e] |= (uint8_t)((val & 15) << (v < 32 ? 0 : 4));
                    }
            }
        }
}

/* the legacy types' pairs of blocks (layout in repack.h) */
static void repack_make_legacy(int qt, const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) {
    const int pb = qt == ER_Q4_0 ? ER_REPACK_Q4_0_PAIR : qt == ER_Q5_0 ? ER_REPACK_Q5_0_PAIR : ER_REPACK_Q8_0_PAIR;
    const int nb = K / 32, bs = qt == ER_Q4_0 ? 18 : qt == ER_Q5_0 ? 22 : 34;
    for (int t = 0; t < N / 16; t++) {
        for (int p = 0; p < nb / 2; p++) {
            uint8_t *o = out + ((size_t)t * (nb / 2) + p) * pb;
            for (int h = 0; h < 2; h++) {
                const int b = 2 * p + h;
                for (int r = 0; r < 16; r++) {
                    const uint8_t *blk = W + (size_t)(16 * t + r) * rb + (size_t)b * bs;
                    memcpy(o + 32 * h + 2 * r, blk, 2); /* the scale */
                    if (qt == ER_Q8_0) {
                        uint8_t *v = o + 64 + 512 * h;
                        for (int j = 0; j < 8; j++)
                            for (int k = 0; k < 4; k++) v[64 * j + 4 * r + k] = (uint8_t)(blk[2 + 4 * j + k] ^ 0x80);
                        continue;
                    }
                    const int q5 = qt == ER_Q5_0;
                    const uint8_t *qs = blk + (q5 ? 6 : 2);
                    uint8_t *v = o + 64 + (q5 ? 128 : 0) + 256 * h;
                    for (int j = 0; j < 4; j++) memcpy(v + 64 * j + 4 * r, qs + 4 * j, 4);
                    if (q5) {
                        uint32_t qh;
                        memcpy(&qh, blk + 2, 4);
                        uint8_t *m = o + 64 + 64 * h;
                        for (int j = 0; j < 8; j++)
                            for (int k = 0; k < 4; k++) {
                                const int vi = j < 4 ? 4 * j + k : 16 + 4 * (j - 4) + k, bit = 4 * r + k;
                                if (qh >> vi & 1) m[8 * j + bit / 8] |= (uint8_t)(1u << (bit % 8));
                                else m[8 * j + bit / 8] &= (uint8_t)~(1u << (bit % 8));
                            }
                    }
                }
            }
        }
    }
}

void repack_make_q4_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) { repack_make_legacy(ER_Q4_0, W, rb, N, K, out); }
void repack_make_q5_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) { repack_make_legacy(ER_Q5_0, W, rb, N, K, out); }
void repack_make_q8_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) { repack_make_legacy(ER_Q8_0, W, rb, N, K, out); }

/* Build the repacked copy of W (N rows of rb bytes) into out (er_tiles_size bytes): 0, or
 * ER_E_UNSUPPORTED when this type / shape / CPU gets none, ER_E_INVALID for null pointers */
ER_API int er_tiles_make(int qt, const void *W, int64_t rb, int N, int K, void *out) {
    if (!er_tiles_size(qt, N, K)) return ER_E_UNSUPPORTED;
    if (!W || !out) return ER_E_INVALID;
    er_traits(er_kern(), qt)->repack_make(W, rb, N, K, out);
    return 0;
}

/* ---- registry: row-major address -> repacked copy */

#define ER_TILES_CAP 8192 /* power of two; a model has a few hundred matrices */
typedef struct {
    _Atomic(const void *) key; /* NULL: empty, ER_TILES_DEAD: removed */
    const uint8_t *tiles;
    int qt, N, K;
    int64_t rb;
} tiles_entry_t;
static tiles_entry_t g_tiles[ER_TILES_CAP];
static pthread_mutex_t g_tiles_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int g_tiles_count = 0;
#define ER_TILES_DEAD ((const void *)1)

static size_t tiles_hash(const void *p) { return (size_t)(((uintptr_t)p >> 6) * 0x9E3779B97F4A7C15ull >> 40) & (ER_TILES_CAP - 1); }

/* W's slot in the table, or -1; *vacant (when asked): the first empty or removed slot of W's chain */
static int tiles_probe(const void *W, int *vacant, memory_order mo) {
    if (vacant) *vacant = -1;
    size_t i = tiles_hash(W);
    for (int probe = 0; probe < ER_TILES_CAP; probe++, i = (i + 1) & (ER_TILES_CAP - 1)) {
        const void *k = atomic_load_explicit(&g_tiles[i].key, mo);
        if (k == W) return (int)i;
        if (vacant && *vacant < 0 && (k == NULL || k == ER_TILES_DEAD)) *vacant = (int)i;
        if (k == NULL) break;
    }
    return -1;
}

/* register the copy `tiles` for W (the caller keeps both alive until er_tiles_remove): 0,
 * ER_E_UNSUPPORTED when this type / shape gets none, ER_E_INVALID for a null pointer or a W already
 * registered, ER_E_NOMEM when the table is full */
ER_API int er_tiles_add(const void *W, int qt, int N, int K, int64_t rb, const void *tiles) {
    if (!W || !tiles) return ER_E_INVALID;
    if (!er_tiles_size(qt, N, K)) return ER_E_UNSUPPORTED;
    pthread_mutex_lock(&g_tiles_mu);
    int vacant, rc;
    if (tiles_probe(W, &vacant, memory_order_relaxed) >= 0) rc = ER_E_INVALID;
    else if (vacant < 0 || atomic_load(&g_tiles_count) >= ER_TILES_CAP / 2) rc = ER_E_NOMEM;
    else {
        tiles_entry_t *e = &g_tiles[vacant];
        e->tiles = tiles;
        e->qt = qt;
        e->N = N;
        e->K = K;
        e->rb = rb;
        atomic_store_explicit(&e->key, W, memory_order_release);
        atomic_fetch_add(&g_tiles_count, 1);
        rc = 0;
    }
    pthread_mutex_unlock(&g_tiles_mu);
    return rc;
}

ER_API int er_tiles_remove(const void *W) {
    pthread_mutex_lock(&g_tiles_mu);
    const int i = tiles_probe(W, NULL, memory_order_relaxed);
    if (i >= 0) {
        atomic_store_explicit(&g_tiles[i].key, ER_TILES_DEAD, memory_order_release);
        atomic_fetch_sub(&g_tiles_count, 1);
    }
    pthread_mutex_unlock(&g_tiles_mu);
    return i >= 0 ? 0 : ER_E_INVALID; /* W was not registered */
}

ER_API int er_tiles_count(void) { return atomic_load(&g_tiles_count); }

/* the tiles of W when they exist and match its shape (lock-free: entries are written before their
 * key is published, and a matrix's entry is removed only once nothing multiplies by it) */
const uint8_t *repack_find(const void *W, int qt, int N, int K, int64_t rb) {
    if (!er_tune.repack || atomic_load_explicit(&g_tiles_count, memory_order_relaxed) == 0) return NULL;
    const int i = tiles_probe(W, NULL, memory_order_acquire);
    if (i < 0) return NULL;
    const tiles_entry_t *e = &g_tiles[i];
    return e->qt == qt && e->N == N && e->K == K && e->rb == rb ? e->tiles : NULL;
}
