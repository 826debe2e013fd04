/*
 * edgerun native kernels: the repacked kernels, AVX-512 VNNI. One 16-row tile of a repacked copy
 * (layout in ../../repack.h, built by ../../repack.c) against up to 8 activation rows per pass,
 * one output row per lane: the weights arrive already transposed, so a tile's block costs plain
 * loads where gather16 (gather16.c) gathers and shuffles.
 */
#if defined(__x86_64__) && !defined(ER_NO_X86)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")

#include "../../repack.h"
#include "tile_dot.h"

AI int repack_pair_bytes(int qt) {
    return qt == ER_Q4_0 ? ER_REPACK_Q4_0_PAIR : qt == ER_Q5_0 ? ER_REPACK_Q5_0_PAIR : ER_REPACK_Q8_0_PAIR;
}

/* One tile of 16 rows from its repacked copy (legacy types), B <= 8 activation rows: y[r * N + n0 + i]. */
AI void repack_legacy_b(const int qt, const uint8_t *T, int K, const int8_t *aq, const float *al, const int32_t *sq,
                       const int B, float *y, int N, int n0) {
    const int nb = K / 32, pb = repack_pair_bytes(qt);
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
AI void repack_q4_K_b(const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb0, const int B,
                            float *y, int N, int n0) {
    const int nsb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *p = T + (size_t)i * ER_REPACK_Q4_K_TB;
        for (int o = 0; o < ER_REPACK_Q4_K_TB; o += 64) _mm_prefetch((const char *)(p + 6 * ER_REPACK_Q4_K_TB + o), _MM_HINT_T1);
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
AI void repack_q6_K_b(const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb0, const int B,
                            float *y, int N, int n0) {
    const int nsb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16), h32 = _mm512_set1_epi8(32);
    __m512 facc[8];
    for (int r = 0; r < B; r++) facc[r] = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *p = T + (size_t)i * ER_REPACK_Q6_K_TB;
        for (int o = 0; o < ER_REPACK_Q6_K_TB; o += 64) _mm_prefetch((const char *)(p + 4 * ER_REPACK_Q6_K_TB + o), _MM_HINT_T1);
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

/* the K-quant kernels with B as a constant (accumulators in registers) */
#define REPACK_KQ(F)                                                                                        \
    switch (B) {                                                                                           \
    case 1: F(T, K, kq, kd, kb, 1, y, N, n0); break; case 2: F(T, K, kq, kd, kb, 2, y, N, n0); break;       \
    case 3: F(T, K, kq, kd, kb, 3, y, N, n0); break; case 4: F(T, K, kq, kd, kb, 4, y, N, n0); break;       \
    case 5: F(T, K, kq, kd, kb, 5, y, N, n0); break; case 6: F(T, K, kq, kd, kb, 6, y, N, n0); break;       \
    case 7: F(T, K, kq, kd, kb, 7, y, N, n0); break; default: F(T, K, kq, kd, kb, 8, y, N, n0); break;      \
    }
static void repack_kquant(int q6, const uint8_t *T, int K, const int8_t *kq, const float *kd, const int16_t *kb,
                                int B, float *y, int N, int n0) {
    if (q6) { REPACK_KQ(repack_q6_K_b) }
    else { REPACK_KQ(repack_q4_K_b) }
}
#undef REPACK_KQ

#define REPACK_CASE(QT, B_) repack_legacy_b(QT, T, K, aq, al, sq, B_, y, N, n0)
#define REPACK_SW(QT)                                                                                       \
    switch (B) {                                                                                           \
    case 1: REPACK_CASE(QT, 1); break; case 2: REPACK_CASE(QT, 2); break; case 3: REPACK_CASE(QT, 3); break; \
    case 4: REPACK_CASE(QT, 4); break; case 5: REPACK_CASE(QT, 5); break; case 6: REPACK_CASE(QT, 6); break; \
    case 7: REPACK_CASE(QT, 7); break; default: REPACK_CASE(QT, 8); break;                                  \
    }
static void repack_legacy(int qt, const uint8_t *T, int K, const int8_t *aq, const float *al,
                                const int32_t *sq, int B, float *y, int N, int n0) {
    if (qt == ER_Q4_0) { REPACK_SW(ER_Q4_0) }
    else if (qt == ER_Q5_0) { REPACK_SW(ER_Q5_0) }
    else { REPACK_SW(ER_Q8_0) }
}
#undef REPACK_SW
#undef REPACK_CASE

/* One tile of 16 rows (T: its repacked copy) against the B activation rows of A, 8 rows a pass:
 * y[r * N + n0 + i]. A holds the K-quant format for Q4_K / Q6_K, the per-32 one otherwise. */
static void repack_tile(int qt, const uint8_t *T, int K, const act_t *A, int B, float *y, int N, int n0) {
    for (int b0 = 0; b0 < B; b0 += 8) {
        const int nr = B - b0 < 8 ? B - b0 : 8;
        float *yb = y + (size_t)b0 * N;
        if (qt == ER_Q4_K || qt == ER_Q6_K)
            repack_kquant(qt == ER_Q6_K, T, K, A->kq + (size_t)b0 * K, A->kd + (size_t)b0 * (K / 256),
                         A->kb + (size_t)b0 * (K / 16), nr, yb, N, n0);
        else
            repack_legacy(qt, T, K, A->q + (size_t)b0 * K, A->l + (size_t)b0 * K / 4, A->sq + (size_t)b0 * (K / 32), nr,
                         yb, N, n0);
    }
}

#define REPACK(name, QT)                                                                                  \
    static void name(const uint8_t *T, int K, const act_t *A, int B, float *y, int N, int n0) {          \
        repack_tile(QT, T, K, A, B, y, N, n0);                                                            \
    }
REPACK(repack_q4_0_q8_0_avx512, ER_Q4_0)
REPACK(repack_q5_0_q8_0_avx512, ER_Q5_0)
REPACK(repack_q8_0_q8_0_avx512, ER_Q8_0)
REPACK(repack_q4_K_q8_K_avx512, ER_Q4_K)
REPACK(repack_q6_K_q8_K_avx512, ER_Q6_K)
#undef REPACK

void er_fill_repack_avx512(er_kernels_t *k) {
    k->type[ER_Q4_0].repack = repack_q4_0_q8_0_avx512;
    k->type[ER_Q5_0].repack = repack_q5_0_q8_0_avx512;
    k->type[ER_Q8_0].repack = repack_q8_0_q8_0_avx512;
    k->type[ER_Q4_K].repack = repack_q4_K_q8_K_avx512;
    k->type[ER_Q6_K].repack = repack_q6_K_q8_K_avx512;
}

#endif
