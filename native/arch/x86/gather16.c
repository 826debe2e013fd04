/*
 * edgerun native kernels: gather16, the small-batch (2..8 activation rows) kernels for the legacy
 * block types Q4_0, Q5_0 and Q8_0 with AVX-512 VNNI + BITALG: 16 weight rows per tile, one output
 * row per lane, read straight from the on-disk rows (the repacked copy, repack.c, is the faster
 * variant for matrices that have one).
 *
 * The row-major fused kernels put 64 consecutive values of one weight row in a vector; every
 * activation row then pays its own scale loads, offset loads and float conversion per 64 values,
 * about 7 instructions per 64 multiply-adds. Here a tile gathers block b of 16 weight rows once and
 * transposes it so that vector j holds values 4j..4j+3 of each of the 16 rows; each activation row
 * then needs 8 VNNI instructions with a broadcast 4-byte activation group, one conversion and two
 * float operations per 512 multiply-adds. Weights enter as unsigned u = value + off (off = 8, 16,
 * 128); the integer accumulator starts at -off * (sum of the activation block), so it holds the
 * exact signed dot product of the block before the float scaling.
 */
#if defined(__x86_64__) && !defined(ER_NO_X86)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx512bitalg,avx2,fma,f16c")

#include "tile_dot.h"

/* lane L of a tile vector holds tile row TILE_ROW[L] (the 4x4 transposes below leave them so) */
static const int32_t TILE_ROW[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
/* 16 rows x 16 bytes at p + TILE_ROW-ordered row offsets -> v[j] = dword j of every row (j < 4) */
AI void tile_t4(const uint8_t *p, int64_t rb, __m512i *v) {
    __m512i z[4];
    for (int g = 0; g < 4; g++) {
        __m512i t = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + (4 * g + 0) * rb)));
        t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(p + (4 * g + 1) * rb)), 1);
        t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(p + (4 * g + 2) * rb)), 2);
        z[g] = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(p + (4 * g + 3) * rb)), 3);
    }
    /* z[g] lane m = row 4g + m; after the transpose v[j] (lane 4m + g) = row 4g + m, dword j */
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* bit-selection controls for Q5_0's high bits: byte k of a qword picks bit (value index) of the
 * low dword (k < 4) or the high dword (k >= 4) of that qword, i.e. of lanes 2q and 2q + 1 */
static uint64_t Q5_SEL[8];
static void q5_sel_init(void) {
    for (int j = 0; j < 8; j++) {
        const int v0 = j < 4 ? 4 * j : 16 + 4 * (j - 4);
        uint64_t c = 0;
        for (int k = 0; k < 8; k++) c |= (uint64_t)(k < 4 ? v0 + k : 32 + v0 + k - 4) << (8 * k);
        Q5_SEL[j] = c;
    }
}


/* One tile: rows n0..n0+15 of W (type qt), B <= 8 activation rows, y[r * N + n0 + i]. */
AI void gather16_b(int qt, const uint8_t *W, int64_t rb, int N, int K, const act_t *A, const int32_t *sq,
                        const int B, float *y, int n0) {
    const int nb = K / 32;
    const int bs = qt == ER_Q4_0 ? 18 : qt == ER_Q5_0 ? 22 : 34;
    const int off = qt == ER_Q4_0 ? 8 : qt == ER_Q5_0 ? 16 : 128;
    const uint8_t *base = W + (size_t)n0 * rb;
    /* tile row order in lanes: the gathers below load in lane order */
    const __m512i lane_row = _mm512_loadu_si512(TILE_ROW);
    const __m512i roff = _mm512_mullo_epi32(lane_row, _mm512_set1_epi32((int)rb));
    const __m512i m0f = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8((char)0x80), h16 = _mm512_set1_epi8(16);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = base + (size_t)b * bs;
        /* the tile after next (its 16 * rb bytes are contiguous): prefetched linearly into L2 over this
         * tile's blocks. Into L1 one tile ahead, the 151936-row Q8_0 head of the 0.5B ran at
         * 9.3 ms for 8 rows; into L2 two tiles ahead, 6.8 ms (B = 4: 8.8 and 6.0 ms). Matrices that
         * stay in the caches run the same either way. */
        for (int64_t o = (int64_t)b * 16 * bs; o < (int64_t)(b + 1) * 16 * bs; o += 64)
            _mm_prefetch((const char *)(base + 32 * rb + o), _MM_HINT_T1);
        __m512i w[8];
        const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(roff, (const void *)blk, 1)));
        if (qt == ER_Q8_0) {
            tile_t4(blk + 2, rb, w);
            tile_t4(blk + 18, rb, w + 4);
            for (int j = 0; j < 8; j++) w[j] = _mm512_xor_si512(w[j], x80);
        } else {
            __m512i v[4];
            tile_t4(blk + (qt == ER_Q5_0 ? 6 : 2), rb, v);
            for (int j = 0; j < 4; j++) {
                w[j] = _mm512_and_si512(v[j], m0f);
                w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v[j], 4), m0f);
            }
            if (qt == ER_Q5_0) {
                const __m512i qh = _mm512_i32gather_epi32(roff, (const void *)(blk + 2), 1);
                for (int j = 0; j < 8; j++) {
                    const __mmask64 m = _mm512_bitshuffle_epi64_mask(qh, _mm512_set1_epi64((long long)Q5_SEL[j]));
                    w[j] = _mm512_mask_add_epi8(w[j], m, w[j], h16);
                }
            }
        }
        tile_rows(w, dw, A->q, A->l, sq, K, b, off, B, facc);
    }
    /* lanes back to row order: out[i] = facc[lane of row i] */
    const __m512i inv = _mm512_loadu_si512(TILE_ROW); /* the permutation is its own inverse */
    for (int r = 0; r < B; r++) _mm512_storeu_ps(y + (size_t)r * N + n0, _mm512_permutexvar_ps(inv, facc[r]));
}

/* B as a constant, so the accumulators stay in registers */
static void gather16(int qt, const uint8_t *W, int64_t rb, int N, int K, const act_t *A, const int32_t *sq,
                          int B, float *y, int n0) {
    switch (B) {
    case 1: gather16_b(qt, W, rb, N, K, A, sq, 1, y, n0); break;
    case 2: gather16_b(qt, W, rb, N, K, A, sq, 2, y, n0); break;
    case 3: gather16_b(qt, W, rb, N, K, A, sq, 3, y, n0); break;
    case 4: gather16_b(qt, W, rb, N, K, A, sq, 4, y, n0); break;
    case 5: gather16_b(qt, W, rb, N, K, A, sq, 5, y, n0); break;
    case 6: gather16_b(qt, W, rb, N, K, A, sq, 6, y, n0); break;
    case 7: gather16_b(qt, W, rb, N, K, A, sq, 7, y, n0); break;
    default: gather16_b(qt, W, rb, N, K, A, sq, 8, y, n0); break;
    }
}

#define GATHER16(name, QT)                                                                                   \
    static void name(const uint8_t *W, int64_t rb, int N, int K, const act_t *A, const int32_t *sq, int B,  \
                     float *y, int n0) {                                                                     \
        gather16(QT, W, rb, N, K, A, sq, B, y, n0);                                                          \
    }
GATHER16(gather16_q4_0_q8_0_avx512, ER_Q4_0)
GATHER16(gather16_q5_0_q8_0_avx512, ER_Q5_0)
GATHER16(gather16_q8_0_q8_0_avx512, ER_Q8_0)
#undef GATHER16

void er_fill_gather16_avx512(er_kernels_t *k) {
    q5_sel_init();
    k->type[ER_Q4_0].gather16 = gather16_q4_0_q8_0_avx512;
    k->type[ER_Q5_0].gather16 = gather16_q5_0_q8_0_avx512;
    k->type[ER_Q8_0].gather16 = gather16_q8_0_q8_0_avx512;
}

#endif
