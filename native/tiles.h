/* Batch tiles: a second copy of a Q4_0 / Q5_0 / Q8_0 / Q4_K / Q6_K matrix, laid out for the
 * small-batch kernels (the K-quant layouts are described at ER_Q4K_TB and ER_Q6K_TB).
 *
 * tile16.h decodes the on-disk rows at every use: per 16 rows x 32 values it gathers the 16 scales
 * (and Q5_0's 16 high-bit words) and transposes 16 row pieces. On the 0.5B at 8 sequences those
 * gathers and shuffles, not the multiply-adds, set the pace (perf: the instruction after the scale
 * gather alone took 11% of the kernel). The serving engine, which runs batches, can ask for this
 * copy once at load (er_tiles_make / er_tiles_add); the row-major matrix stays for one sequence,
 * for prefill and for embedding lookups.
 *
 * Layout, per tile of 16 rows (rows n0..n0+15, n0 a multiple of 16), per pair of blocks 2p, 2p+1
 * (32 values each; a tile is nb/2 pairs, tiles follow each other):
 *   64 B  scales: 16 halves of block 2p (row order), then 16 of block 2p+1
 *   Q5_0: 2 x 64 B high-bit masks, block 2p then 2p+1: eight 64-bit masks per block, mask j bit
 *         4 * row + k = high bit of the value that byte 4 * row + k of vector j holds
 *   Q4_0 / Q5_0: 2 x 256 B nibbles: four 64-byte vectors per block, vector j dword `row` = bytes
 *         4j..4j+3 of that row's qs (low nibbles: values 4j..4j+3, high: 16+4j..16+4j+3)
 *   Q8_0: 2 x 512 B: eight vectors per block, vector j dword `row` = values 4j..4j+3 of the row,
 *         each + 128 (unsigned for VNNI)
 * A pair is 576 / 704 / 1088 bytes (9 / 11 / 17 cache lines), the same bytes as the 16 x 2 blocks
 * it replaces, so the copy is as large as the matrix.
 *
 * Lookup: a lock-free open-addressing table keyed by the row-major matrix's address; fused_rows
 * asks it on each call. The Python side registers a copy for as long as the matrix array lives
 * (edgerun/backends/native.py). Included by edgerun_kernels.c. */

static int tiles_pair_bytes(int qt) {
    return qt == ER_Q4_0 ? 576 : qt == ER_Q5_0 ? 704 : qt == ER_Q8_0 ? 1088 : 0;
}

/* Q4_K: per tile of 16 rows and super-block of 256 values, 2368 bytes (37 cache lines; the 16 blocks
 * take 2304): 16 halves d, 16 halves dmin, the 8 six-bit sub-block scales as bytes (sub-block-major:
 * 16 rows each), the 8 mins as byte pairs (pair t: mins 2t, 2t+1 of each row, for int16 madds), then
 * the nibbles: per 64-value chunk c, eight vectors j whose dword `row` is bytes 32c+4j..+3 of that
 * row's qs (low nibbles: values 64c+4j.., sub-block 2c; high: 64c+32+4j.., sub-block 2c+1). */
#define ER_Q4K_TB 2368

/* Q6_K: per tile and super-block 3360 bytes (the 16 blocks' size): 16 halves d, the 16 int8
 * sub-block scales (sub-block-major: 16 rows each), then per vector v < 64 (values 4v..4v+3 of
 * each row, dword = row) two 64-bit lane masks (bit 4 and bit 5 of the 6-bit values), then 32
 * nibble vectors: k holds vector k's low four bits in its low nibbles and vector k + 32's in its
 * high ones. Values enter as u = q + 32 (0..63). */
#define ER_Q6K_TB 3360

/* bytes of the tiles of an N x K matrix of type qt: 0 when it gets none (other types, an odd
 * number of blocks per row, under 16 rows, or no AVX-512 VNNI kernel on this CPU) */
ER_API int64_t er_tiles_size(int qt, int N, int K) {
    if (g_isa < 0) detect_isa();
    if (K <= 0 || N < 16 || g_isa_max < ISA_AVX512VNNI) return 0;
    if (qt == ER_Q4_K) return K % 256 ? 0 : (int64_t)(N / 16) * (K / 256) * ER_Q4K_TB;
    if (qt == ER_Q6_K) return K % 256 ? 0 : (int64_t)(N / 16) * (K / 256) * ER_Q6K_TB;
    const int pb = tiles_pair_bytes(qt);
    if (!pb || K % 64) return 0;
    return (int64_t)(N / 16) * (K / 64) * pb;
}

/* Build the tiles of W (N rows of row_bytes) into out (er_tiles_size bytes). Returns 0 or -1. */
static void tiles_make_q4k(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) {
    const int nsb = K / 256;
    for (int t = 0; t < N / 16; t++)
        for (int i = 0; i < nsb; i++) {
            uint8_t *o = out + ((size_t)t * nsb + i) * ER_Q4K_TB;
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

static void tiles_make_q6k(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out) {
    const int nsb = K / 256;
    for (int t = 0; t < N / 16; t++)
        for (int i = 0; i < nsb; i++) {
            uint8_t *o = out + ((size_t)t * nsb + i) * ER_Q6K_TB;
            memset(o, 0, ER_Q6K_TB);
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

ER_API int er_tiles_make(int qt, const void *Wv, int64_t rb, int N, int K, void *outv) {
    const int pb = tiles_pair_bytes(qt);
    if (!er_tiles_size(qt, N, K)) return -1;
    const uint8_t *W = Wv;
    uint8_t *out = outv;
    if (qt == ER_Q4_K || qt == ER_Q6_K) {
        (qt == ER_Q4_K ? tiles_make_q4k : tiles_make_q6k)(W, rb, N, K, out);
        return 0;
    }
    const int nb = K / 32, bs = block_size(qt) == 32 ? (qt == ER_Q4_0 ? 18 : qt == ER_Q5_0 ? 22 : 34) : 0;
    if (!bs) return -1;
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
    return 0;
}

/* ---- registry: row-major address -> tiles */

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
static int g_tiles_on = 1; /* er_set_tiles */
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

/* register tiles for W (the caller keeps both alive until er_tiles_remove); 0, or -1 when W is
 * already registered or the table is full */
ER_API int er_tiles_add(const void *W, int qt, int N, int K, int64_t rb, const void *tiles) {
    if (!W || !tiles || !er_tiles_size(qt, N, K)) return -1;
    pthread_mutex_lock(&g_tiles_mu);
    int vacant, rc = -1;
    if (tiles_probe(W, &vacant, memory_order_relaxed) < 0 && vacant >= 0 &&
        atomic_load(&g_tiles_count) < ER_TILES_CAP / 2) {
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
    return i >= 0 ? 0 : -1;
}

ER_API int er_tiles_count(void) { return atomic_load(&g_tiles_count); }
ER_API int er_set_tiles(int on) { int old = g_tiles_on; g_tiles_on = on != 0; return old; }

/* the tiles of W when they exist and match its shape (lock-free: entries are written before their
 * key is published, and a matrix's entry is removed only once nothing multiplies by it) */
static const uint8_t *tiles_find(const void *W, int qt, int N, int K, int64_t rb) {
    if (!g_tiles_on || atomic_load_explicit(&g_tiles_count, memory_order_relaxed) == 0) return NULL;
    const int i = tiles_probe(W, NULL, memory_order_acquire);
    if (i < 0) return NULL;
    const tiles_entry_t *e = &g_tiles[i];
    return e->qt == qt && e->N == N && e->K == K && e->rb == rb ? e->tiles : NULL;
}

#ifdef ER_X86
/* One tile of 16 rows from its tiles, B <= 8 activation rows: y[r * N + n0 + i]. */
T_V512 AI void tiles_b(const int qt, const uint8_t *T, int K, const int8_t *aq, const float *al, const int32_t *sq,
                       const int B, float *y, int N, int n0) {
    const int nb = K / 32, pb = tiles_pair_bytes(qt);
    const int off = qt == ER_Q4_0 ? 8 : qt == ER_Q5_0 ? 16 : 128;
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int p = 0; p < nb / 2; p++) {
        const uint8_t *pp = T + (size_t)p * pb;
        /* 24 pairs (14-26 KB) ahead into L2: at 8 rows the kernel computes long enough per byte that a
         * short prefetch leaves compute and memory taking turns (0.5B 8-row step 36.0 -> 25.4 ms
         * against 8 pairs ahead into L1) */
        for (int o = 0; o < pb; o += 64) _mm_prefetch((const char *)(pp + 24 * pb + o), _MM_HINT_T1);
        const __m512i dh = _mm512_loadu_si512(pp);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int b = 2 * p + h;
            const __m512 dw = _mm512_cvtph_ps(h ? _mm512_extracti64x4_epi64(dh, 1) : _mm512_castsi512_si256(dh));
            __m512i w[8];
            if (qt == ER_Q8_0) {
                for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512(pp + 64 + 512 * h + 64 * j);
            } else {
                const uint8_t *qs = pp + 64 + (qt == ER_Q5_0 ? 128 : 0) + 256 * h;
                for (int j = 0; j < 4; j++) {
                    const __m512i v = _mm512_loadu_si512(qs + 64 * j);
                    w[j] = _mm512_and_si512(v, m0f);
                    w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
                }
                if (qt == ER_Q5_0) {
                    const uint8_t *mk = pp + 64 + 64 * h;
                    for (int j = 0; j < 8; j++) {
                        uint64_t m;
                        memcpy(&m, mk + 8 * j, 8);
                        w[j] = _mm512_mask_add_epi8(w[j], (__mmask64)m, w[j], h16);
                    }
                }
            }
            tile_rows(w, dw, aq, al, sq, K, b, off, B, facc);
        }
    }
    for (int r = 0; r < B; r++) _mm512_storeu_ps(y + (size_t)r * N + n0, facc[r]);
}

/* One Q4_K tile of 16 rows, B <= 8 activation rows in the K-quant format (int8 with one scale per
 * 256, int16 sums per 16). Per sub-block and row: 8 VNNI instructions, then the scale d * sc of each
 * lane times the activation scale; per super-block and row the mins: dmin * sum_s m_s * (activation
 * sum of sub-block s), as four int16 madds of the lanes' min pairs with the sums' pairs. */
T_V512 AI void tiles_q4k_b(const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb0, const int B,
                            float *y, int N, int n0) {
    const int nsb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *p = T + (size_t)i * ER_Q4K_TB;
        for (int o = 0; o < ER_Q4K_TB; o += 64) _mm_prefetch((const char *)(p + 6 * ER_Q4K_TB + o), _MM_HINT_T1);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        const __m512 dmv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
        for (int s = 0; s < 8; s++) {
            const __m512 scf =
                _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 64 + 16 * s)))));
            const int c = s / 2, hi = s & 1;
            __m512i w[8];
            for (int j = 0; j < 8; j++) {
                const __m512i v = _mm512_loadu_si512(p + 320 + 512 * c + 64 * j);
                w[j] = _mm512_and_si512(hi ? _mm512_srli_epi16(v, 4) : v, m0f);
            }
#pragma GCC unroll 8
            for (int r = 0; r < B; r++) {
                const int8_t *q = kq + (size_t)r * K + 256 * i + 64 * c + 32 * hi;
                __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    int32_t a4;
                    memcpy(&a4, q + 4 * j, 4);
                    acc = _mm512_dpbusd_epi32(acc, w[j], _mm512_set1_epi32(a4));
                }
                facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(scf, _mm512_set1_ps(kd[(size_t)r * nsb + i])),
                                          facc[r]);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < B; r++) {
            const int16_t *kb = kb0 + (size_t)r * (K / 16) + 16 * i;
            __m512i macc = _mm512_setzero_si512();
            for (int t = 0; t < 4; t++) {
                const int s0 = kb[4 * t] + kb[4 * t + 1], s1 = kb[4 * t + 2] + kb[4 * t + 3];
                const int32_t pair = (int32_t)((uint32_t)(uint16_t)s0 | ((uint32_t)(uint16_t)s1 << 16));
                const __m512i mp = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 192 + 32 * t)));
                macc = _mm512_dpwssd_epi32(macc, mp, _mm512_set1_epi32(pair));
            }
            facc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(macc), _mm512_mul_ps(dmv, _mm512_set1_ps(kd[(size_t)r * nsb + i])),
                                       facc[r]);
        }
    }
    for (int r = 0; r < B; r++) _mm512_storeu_ps(y + (size_t)r * N + n0, facc[r]);
}

/* One Q6_K tile of 16 rows, B <= 8 activation rows (K-quant format). Per 16-value sub-block and row:
 * the accumulator starts at -32 * (the activation sum of the sub-block), takes 4 VNNI instructions,
 * then is multiplied by the lanes' int8 scales into the super-block's integer sum; per super-block
 * and row one conversion and one multiply-add with d times the activation scale. */
T_V512 AI void tiles_q6k_b(const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb0, const int B,
                            float *y, int N, int n0) {
    const int nsb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16), h32 = _mm512_set1_epi8(32);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *p = T + (size_t)i * ER_Q6K_TB;
        for (int o = 0; o < ER_Q6K_TB; o += 64) _mm_prefetch((const char *)(p + 4 * ER_Q6K_TB + o), _MM_HINT_T1);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        __m512i isum[8];
        for (int r = 0; r < B; r++) isum[r] = _mm512_setzero_si512();
        for (int sb = 0; sb < 16; sb++) {
            const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 32 + 16 * sb)));
            __m512i w[4];
            for (int j = 0; j < 4; j++) {
                const int v = 4 * sb + j;
                const __m512i nb = _mm512_loadu_si512(p + 1312 + 64 * (v % 32));
                __m512i x = _mm512_and_si512(v < 32 ? nb : _mm512_srli_epi16(nb, 4), m0f);
                uint64_t m4, m5;
                memcpy(&m4, p + 288 + 16 * v, 8);
                memcpy(&m5, p + 288 + 16 * v + 8, 8);
                x = _mm512_mask_add_epi8(x, (__mmask64)m4, x, h16);
                w[j] = _mm512_mask_add_epi8(x, (__mmask64)m5, x, h32);
            }
#pragma GCC unroll 8
            for (int r = 0; r < B; r++) {
                const int8_t *q = kq + (size_t)r * K + 256 * i + 16 * sb;
                __m512i acc = _mm512_set1_epi32(-32 * kb0[(size_t)r * (K / 16) + 16 * i + sb]);
                for (int j = 0; j < 4; j++) {
                    int32_t a4;
                    memcpy(&a4, q + 4 * j, 4);
                    acc = _mm512_dpbusd_epi32(acc, w[j], _mm512_set1_epi32(a4));
                }
                isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(acc, sc));
            }
        }
        for (int r = 0; r < B; r++)
            facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dv, _mm512_set1_ps(kd[(size_t)r * nsb + i])),
                                      facc[r]);
    }
    for (int r = 0; r < B; r++) _mm512_storeu_ps(y + (size_t)r * N + n0, facc[r]);
}

/* the K-quant tiles with B as a constant (accumulators in registers) */
#define TILES_KQ(F)                                                                                        \
    switch (B) {                                                                                           \
    case 1: F(T, K, kq, kd, kb, 1, y, N, n0); break; case 2: F(T, K, kq, kd, kb, 2, y, N, n0); break;       \
    case 3: F(T, K, kq, kd, kb, 3, y, N, n0); break; case 4: F(T, K, kq, kd, kb, 4, y, N, n0); break;       \
    case 5: F(T, K, kq, kd, kb, 5, y, N, n0); break; case 6: F(T, K, kq, kd, kb, 6, y, N, n0); break;       \
    case 7: F(T, K, kq, kd, kb, 7, y, N, n0); break; default: F(T, K, kq, kd, kb, 8, y, N, n0); break;      \
    }
T_V512 static void tiles_kquant(int q6, const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb,
                                int B, float *y, int N, int n0) {
    if (q6) { TILES_KQ(tiles_q6k_b) }
    else { TILES_KQ(tiles_q4k_b) }
}
#undef TILES_KQ

#define TILES_CASE(QT, B_) tiles_b(QT, T, K, aq, al, sq, B_, y, N, n0)
#define TILES_SW(QT)                                                                                       \
    switch (B) {                                                                                           \
    case 1: TILES_CASE(QT, 1); break; case 2: TILES_CASE(QT, 2); break; case 3: TILES_CASE(QT, 3); break; \
    case 4: TILES_CASE(QT, 4); break; case 5: TILES_CASE(QT, 5); break; case 6: TILES_CASE(QT, 6); break; \
    case 7: TILES_CASE(QT, 7); break; default: TILES_CASE(QT, 8); break;                                  \
    }
T_V512 static void tiles_kernel(int qt, const uint8_t *T, int K, const int8_t *aq, const float *al,
                                const int32_t *sq, int B, float *y, int N, int n0) {
    if (qt == ER_Q4_0) { TILES_SW(ER_Q4_0) }
    else if (qt == ER_Q5_0) { TILES_SW(ER_Q5_0) }
    else { TILES_SW(ER_Q8_0) }
}
#undef TILES_SW
#undef TILES_CASE

/* One tile of 16 rows (T: its tiles) against the B activation rows of A, 8 rows a pass:
 * y[r * N + n0 + i]. A holds the K-quant format for Q4_K / Q6_K, the per-32 one otherwise. */
T_V512 static void tiles_tile(int qt, const uint8_t *T, int K, const act_t *A, int B, float *y, int N, int n0) {
    for (int b0 = 0; b0 < B; b0 += 8) {
        const int nr = B - b0 < 8 ? B - b0 : 8;
        float *yb = y + (size_t)b0 * N;
        if (qt == ER_Q4_K || qt == ER_Q6_K)
            tiles_kquant(qt == ER_Q6_K, T, K, A->kq + (size_t)b0 * K, A->kd + (size_t)b0 * (K / 256),
                         A->kb + (size_t)b0 * (K / 16), nr, yb, N, n0);
        else
            tiles_kernel(qt, T, K, A->q + (size_t)b0 * K, A->l + (size_t)b0 * K / 4, A->sq + (size_t)b0 * (K / 32), nr,
                         yb, N, n0);
    }
}
#endif
