/*
 * edgerun native kernels for AVX-512 (F, BW, VL, DQ) with VNNI: activation quantization, the
 * decoded-row dot core, float dot products, the fused row kernels of every hot type (8 activation
 * rows a pass), the several-weight-rows-per-pass kernels for one or two activation rows, and the
 * attention kernel for head sizes 64, 128 and 256.
 *
 *  - Legacy types (Q4_0 / Q5_0 / Q8_0) take q8_0 activations and dpbusd: weights enter as unsigned
 *    bytes (value + 128, Q4_0 / Q5_0 as q + 128 with q = value + 8 / 16), the activation offsets
 *    (act_t.n, -128 * sums of 4, adjusted by act_offset_variant) make the products signed again.
 *  - K-quants (Q4_K / Q5_K / Q6_K) take q8_K activations: maddubs (u8 weights x s8 activations ->
 *    s16 pairs) then dpwssd with the integer sub-block scales, so the sub-block scales are applied
 *    in int32 and floats are touched once per 256 values.
 * The GEMM (gemm.c), gather16 (gather16.c) and repacked (repack.c) kernels sit beside this file.
 */
#if defined(__x86_64__) && !defined(ER_NO_X86)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")

#include "../../attention.h"
#include "x86.h"

/* ------------------------------------------------- activation quantization */

static void quantize_row_q8_0_avx512(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n) {
    const __m512 sgn = _mm512_set1_ps(-0.0f);
    const __m512 half = _mm512_set1_ps(0.5f);
    float amax = 0.f;
    for (int b = 0; b < K / 32; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        if ((32 * b) % group == 0) {
            const int end = 32 * b + group < K ? 32 * b + group : K;
            __m512 a = _mm512_setzero_ps();
            for (int i = 32 * b; i < end; i += 16) a = _mm512_max_ps(a, _mm512_andnot_ps(sgn, _mm512_loadu_ps(x + i)));
            amax = _mm512_reduce_max_ps(a);
        }
        const float d = amax / 127.f;
        const float id = amax > 0.f ? 127.f / amax : 0.f;
        __m512 vid = _mm512_set1_ps(id);
        x0 = _mm512_mul_ps(x0, vid);
        x1 = _mm512_mul_ps(x1, vid);
        /* round half away from zero */
        x0 = _mm512_add_ps(x0, _mm512_or_ps(half, _mm512_and_ps(sgn, x0)));
        x1 = _mm512_add_ps(x1, _mm512_or_ps(half, _mm512_and_ps(sgn, x1)));
        __m512i i0 = _mm512_cvttps_epi32(x0), i1 = _mm512_cvttps_epi32(x1);
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtepi32_epi8(i1));
        s[2 * b] = d * (float)_mm512_reduce_add_epi32(i0);
        s[2 * b + 1] = d * (float)_mm512_reduce_add_epi32(i1);
        _mm256_storeu_ps(l + 8 * b, _mm256_set1_ps(d));
        /* sums of 4 consecutive values: lanes 4i..4i+3 of i0 then i1 */
        __m512i idx_a = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
        __m512i t0 = _mm512_permutex2var_epi32(i0, idx_a, i1);
        __m512i t1 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(1)), i1);
        __m512i t2 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(2)), i1);
        __m512i t3 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(3)), i1);
        __m512i sum4 = _mm512_add_epi32(_mm512_add_epi32(t0, t1), _mm512_add_epi32(t2, t3));
        sum4 = _mm512_mullo_epi32(sum4, _mm512_set1_epi32(-128));
        _mm256_storeu_si256((__m256i *)(n + 8 * b), _mm512_castsi512_si256(sum4));
    }
}

static void quantize_row_q8_K_avx512(const float *x, int K, int8_t *q, float *d, int16_t *bsum) {
    const __m512 sgn = _mm512_set1_ps(-0.0f), half = _mm512_set1_ps(0.5f);
    for (int i = 0; i < K / 256; i++) {
        const float *xb = x + 256 * i;
        __m512 a = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) a = _mm512_max_ps(a, _mm512_andnot_ps(sgn, _mm512_loadu_ps(xb + 16 * j)));
        const float amax = _mm512_reduce_max_ps(a);
        d[i] = amax / 127.f;
        const __m512 vid = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        for (int j = 0; j < 16; j++) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + 16 * j), vid);
            v = _mm512_add_ps(v, _mm512_or_ps(half, _mm512_and_ps(sgn, v)));
            const __m512i iv = _mm512_cvttps_epi32(v);
            _mm_storeu_si128((__m128i *)(q + 256 * i + 16 * j), _mm512_cvtepi32_epi8(iv));
            bsum[16 * i + j] = (int16_t)_mm512_reduce_add_epi32(iv);
        }
    }
}

/* ---------------------------------------------------------- decoded-row dot core */

AI void dot_decoded_avx512_nr(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int NR,
                            float *res) {
    __m512 acc[4];
    const int8_t *q[4];
    const float *xl[4];
    const int32_t *xn[4];
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    for (int r = 0; r < NR; r++) {
        acc[r] = _mm512_setzero_ps();
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
        xn[r] = A->n + (size_t)(b + r) * K / 4;
    }
    __m512 acc2[4];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
#define V512_CHUNK(ACC, c_)                                                                                     \
    {                                                                                                           \
        const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(w + (c_)), x80);                                  \
        const __m512 s = _mm512_loadu_ps(wl + (c_) / 4);                                                        \
        for (int r = 0; r < NR; r++) {                                                                          \
            __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (c_) / 4), u, _mm512_loadu_si512(q[r] + (c_))); \
            ACC[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(s, _mm512_loadu_ps(xl[r] + (c_) / 4)), ACC[r]); \
        }                                                                                                       \
    }
    int c = 0;
    for (; c + 128 <= K; c += 128) {
        V512_CHUNK(acc, c);
        V512_CHUNK(acc2, c + 64);
    }
    for (; c + 64 <= K; c += 64) V512_CHUNK(acc, c);
#undef V512_CHUNK
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    if (c < K) { /* 32-value tail */
        const __mmask64 m = 0xFFFFFFFFull;
        const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + c), x80);
        const __m512 s = _mm512_maskz_loadu_ps(0xFF, wl + c / 4);
        for (int r = 0; r < NR; r++) {
            __m512i p = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(0xFF, xn[r] + c / 4), u,
                                            _mm512_maskz_loadu_epi8(m, q[r] + c));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(s, _mm512_maskz_loadu_ps(0xFF, xl[r] + c / 4)),
                                     acc[r]);
        }
    }
    if (mw) {
        const int G = K / 16;
        for (int r = 0; r < NR; r++) {
            const float *xs = A->s + (size_t)(b + r) * G;
            int g = 0;
            for (; g + 16 <= G; g += 16)
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mw + g), _mm512_loadu_ps(xs + g), acc[r]);
            if (g < G) {
                const __mmask16 m = (__mmask16)((1u << (G - g)) - 1);
                acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, mw + g), _mm512_maskz_loadu_ps(m, xs + g), acc[r]);
            }
        }
    }
    for (int r = 0; r < NR; r++) res[r] = _mm512_reduce_add_ps(acc[r]);
}

static void dot_decoded_q8_0_avx512(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                             float *res) {
    switch (nr) {
    case 1: dot_decoded_avx512_nr(w, wl, mw, K, A, b, 1, res); break;
    case 2: dot_decoded_avx512_nr(w, wl, mw, K, A, b, 2, res); break;
    case 3: dot_decoded_avx512_nr(w, wl, mw, K, A, b, 3, res); break;
    default: dot_decoded_avx512_nr(w, wl, mw, K, A, b, 4, res); break;
    }
}

/* ---- fused row kernels: decode blocks in registers, dot with up to ER_V512_NR (8) activation rows ---- */


#define FZ_SETUP()                                                      \
    __m512 acc[ER_V512_NR];                                                      \
    const int8_t *q[ER_V512_NR];                                                 \
    const float *xl[ER_V512_NR];                                                 \
    const int32_t *xn[ER_V512_NR];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        acc[r] = _mm512_setzero_ps();                                   \
        q[r] = A->q + (size_t)(b + r) * K;                              \
        xl[r] = A->l + (size_t)(b + r) * K / 4;                         \
        xn[r] = A->n + (size_t)(b + r) * K / 4;                         \
    }

/* u: 64 unsigned bytes (value + 128), s: 16 lane weight scales, e: element offset */
#define FZ_ACC(u, s, e)                                                                                   \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (e) / 4), (u),                        \
                                         _mm512_loadu_si512(q[r] + (e)));                                 \
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_), _mm512_mul_ps((s), _mm512_loadu_ps(xl[r] + (e) / 4)), \
                                 acc[r]);                                                                 \
    }

/* same for a 32-value tail: only the low 32 bytes / 8 lanes are valid */
#define FZ_ACC32(u, s, e)                                                                                 \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(0xFF, xn[r] + (e) / 4), (u),            \
                                         _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q[r] + (e)));             \
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_),                                                  \
                                 _mm512_mul_ps((s), _mm512_maskz_loadu_ps(0xFF, xl[r] + (e) / 4)), acc[r]); \
    }

#define FZ_FINISH()                                                     \
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(acc[r]);

AI __m512 scale2(uint16_t d0, uint16_t d1) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16((short)d1), _mm_set1_epi16((short)d0)));
}

/* two 16-byte nibble blocks -> 64 bytes: b0 lo, b0 hi, b1 lo, b1 hi */
AI __m512i nib2(const uint8_t *q0, const uint8_t *q1) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)q0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q0), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q1), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q1), 3);
    const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                         0x0004000400040004LL, 0x0004000400040004LL);
    return _mm512_and_si512(_mm512_srlv_epi16(v, sh), _mm512_set1_epi8(15));
}


#define FZ_ACCX(ACC, u, s, e)                                                                             \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (e) / 4), (u),                        \
                                         _mm512_loadu_si512(q[r] + (e)));                                 \
        ACC[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_), _mm512_mul_ps((s), _mm512_loadu_ps(xl[r] + (e) / 4)), \
                                 ACC[r]);                                                                 \
    }

AI uint64_t bytemask(int n) { return n >= 64 ? ~0ull : ((1ull << n) - 1); }

/* word-permutation tables (vpermw) for two consecutive legacy blocks loaded into one zmm */
static const uint16_t IDX_Q4_0_Q[32] = {1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                                        10, 11, 12, 13, 14, 15, 16, 17, 10, 11, 12, 13, 14, 15, 16, 17};
static const uint16_t IDX_Q4_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9};
static const uint16_t IDX_Q5_0_Q[32] = {3, 4, 5, 6, 7, 8, 9, 10, 3, 4, 5, 6, 7, 8, 9, 10,
                                        14, 15, 16, 17, 18, 19, 20, 21, 14, 15, 16, 17, 18, 19, 20, 21};
static const uint16_t IDX_Q5_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 11, 11, 11, 11, 11, 11, 11, 11};
static const uint16_t IDX_Q8_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 17, 17, 17};

AI __m512 halfscales(__m512i idx, __m512i v) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, v)));
}

/* decoding Q4_0 / Q5_0 blocks two at a time: u = q | 0x80 = q + 128 (the activation offsets in
 * A->n already hold -(128 + 8|16) * sum), with Q5_0's fifth bits added as 16 */
typedef struct {
    __m512i iq, is, sh, m0f, h16, x80;
    int five, bs;
    uint64_t m2, m1;
} q45_dec_t;

AI q45_dec_t q45_dec(int five) {
    const q45_dec_t d = {_mm512_loadu_si512(five ? IDX_Q5_0_Q : IDX_Q4_0_Q),
                         _mm512_loadu_si512(five ? IDX_Q5_0_S : IDX_Q4_0_S),
                         _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                           0x0004000400040004LL, 0x0004000400040004LL),
                         _mm512_set1_epi8(15), _mm512_set1_epi8(16), _mm512_set1_epi8((char)0x80),
                         five, five ? 22 : 18, bytemask(2 * (five ? 22 : 18)), bytemask(five ? 22 : 18)};
    return d;
}

/* the block pair at p0 (only its first block when !two): unsigned values, and lane scales in *s */
AI __m512i q45_pair(const q45_dec_t *d, const uint8_t *p0, int two, __m512 *s) {
    const __m512i v = _mm512_maskz_loadu_epi8(two ? d->m2 : d->m1, p0);
    __m512i u = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(_mm512_permutexvar_epi16(d->iq, v), d->sh), d->m0f,
                                          d->x80, 0xEA);
    if (d->five) {
        uint32_t h0, h1 = 0;
        memcpy(&h0, p0 + 2, 4);
        if (two) memcpy(&h1, p0 + d->bs + 2, 4);
        u = _mm512_mask_add_epi8(u, (__mmask64)h0 | ((__mmask64)h1 << 32), u, d->h16);
    }
    *s = halfscales(d->is, v);
    return u;
}

/* Q4_0 / Q5_0: two blocks per zmm, two accumulator sets to hide FMA latency */
AI void fused_q4q5_0_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FZ_SETUP();
    __m512 acc2[ER_V512_NR];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
    const q45_dec_t d = q45_dec(five);
    const int nb = K / 32;
#define Q45_PAIR(ACC, i_, two)                                                  \
    {                                                                           \
        __m512 s;                                                               \
        const __m512i u = q45_pair(&d, row + (size_t)(i_) * d.bs, (two), &s);   \
        if (two) { FZ_ACCX(ACC, u, s, 32 * (i_)); }                             \
        else { FZ_ACC32(u, s, 32 * (i_)); }                                     \
    }
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        Q45_PAIR(acc, i, 1);
        Q45_PAIR(acc2, i + 2, 1);
    }
    for (; i + 2 <= nb; i += 2) Q45_PAIR(acc, i, 1);
    if (i < nb) Q45_PAIR(acc, i, 0);
#undef Q45_PAIR
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    FZ_FINISH();
}

AI void fused_q8_0_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FZ_SETUP();
    __m512 acc2[ER_V512_NR];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
    const int nb = K / 32;
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const __m512i is = _mm512_loadu_si512(IDX_Q8_0_S);
#define Q8_PAIR(ACC, i_)                                                                              \
    {                                                                                                 \
        const uint8_t *p0 = row + (size_t)(i_) * 34;                                                  \
        __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2)));            \
        v = _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)(p0 + 36)), 1);                 \
        const __m512i u = _mm512_xor_si512(v, x80);                                                   \
        const __m512 s = halfscales(is, _mm512_loadu_si512(p0));                                      \
        FZ_ACCX(ACC, u, s, 32 * (i_));                                                                \
    }
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        Q8_PAIR(acc, i);
        Q8_PAIR(acc2, i + 2);
    }
    for (; i + 2 <= nb; i += 2) Q8_PAIR(acc, i);
#undef Q8_PAIR
    if (i < nb) {
        const uint8_t *p0 = row + (size_t)i * 34;
        const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(0xFFFFFFFFull, p0 + 2), x80);
        const __m512 s = halfscales(is, _mm512_maskz_loadu_epi8(bytemask(34), p0));
        FZ_ACC32(u, s, 32 * i);
    }
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    FZ_FINISH();
}

/* ---- K-quants with Q8_K-style activations (one scale per 256, sums per 16):
 * maddubs (u8 weights x s8 activations -> s16 pairs) then dpwssd with the integer
 * sub-block scales, accumulated in int32 over a super-block. */

/* K-quant kernels for 2+ activation rows: these stream slower than one row does, so they fetch
 * further ahead (into L2) to keep the memory busy while they compute */
#ifndef ER_FK_PF
#define ER_FK_PF 4096 /* 0.5B ffn_down (896 x 4864) at 8 rows, 24 matrices in turn: Q4_K 535 -> 377 us, Q6_K 567 -> 350 */
#define ER_FK_HINT _MM_HINT_T1
#endif
#define FK_SETUP()                                                      \
    const int nb = K / 256;                                             \
    __m512 facc[ER_V512_NR];                                                     \
    __m256 macc[ER_V512_NR];                                                     \
    const int8_t *kq[ER_V512_NR];                                                \
    const float *kd[ER_V512_NR];                                                 \
    const int16_t *kb[ER_V512_NR];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        facc[r] = _mm512_setzero_ps();                                  \
        macc[r] = _mm256_setzero_ps();                                  \
        kq[r] = A->kq + (size_t)(b + r) * K;                            \
        kd[r] = A->kd + (size_t)(b + r) * nb;                           \
        kb[r] = A->kb + (size_t)(b + r) * (K / 16);                     \
    }

static const uint16_t IDX_K45_SC[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}};
static const uint16_t IDX_K45_M[32] = {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
static const uint16_t IDX_Q6K_SC[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
     14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

AI void fused_q45_K_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FK_SETUP();
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    const __m512i shn = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i im = _mm512_loadu_si512(IDX_K45_M);
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * bsz;
        _mm_prefetch((const char *)blk + ER_FK_PF, ER_FK_HINT);
        _mm_prefetch((const char *)blk + ER_FK_PF + 64, ER_FK_HINT);
        _mm_prefetch((const char *)blk + ER_FK_PF + 128, ER_FK_HINT);
        const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
        /* 12 packed bytes -> [sc0..7, m0..7] (6 bits each), as dwords (u0, u1, u2):
         * sc_lo = u0 & 0x3f.., sc_hi = (u2 & 0x0f..) | ((u0 >> 2) & 0x30..),
         * m_lo = u1 & 0x3f.., m_hi = ((u2 >> 4) & 0x0f..) | ((u1 >> 2) & 0x30..) */
        const __m128i v = _mm_loadu_si128((const __m128i *)(blk + 4)); /* 4 extra bytes of qh/qs: unused */
        const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
        const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2);
        const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
        const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
        const __m512i scw = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_or_si128(lo, hi)));
        const uint8_t *qs = blk + (five ? 48 : 16);
        __m512i qh = _mm512_setzero_si512();
        if (five) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
        __m512i isum[ER_V512_NR];
        for (int r = 0; r < NR; r++) isum[r] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
            __m512i u = _mm512_and_si512(_mm512_srlv_epi16(v, shn), m0f);
            if (five) {
                const __m512i bit = _mm512_mask_mov_epi8(_mm512_set1_epi8((char)(1 << (2 * c))), 0xFFFFFFFF00000000ull,
                                                         _mm512_set1_epi8((char)(2 << (2 * c))));
                u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bit), u, h16);
            }
            const __m512i sc = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_K45_SC[c]), scw);
            for (int r = 0; r < NR; r++) {
                const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(kq[r] + 256 * i + 64 * c));
                isum[r] = _mm512_dpwssd_epi32(isum[r], p, sc);
            }
        }
        const __m256i m16 = _mm512_castsi512_si256(_mm512_permutexvar_epi16(im, scw));
        for (int r = 0; r < NR; r++) {
            const float da = kd[r][i];
            facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * da), facc[r]);
            const __m256i mi = _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i)));
            macc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(facc[r]) - hsum256(macc[r]);
}

AI void fused_q6_K_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FK_SETUP();
    (void)macc;
    const block_q6_K *bk = (const block_q6_K *)row;
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i shA = _mm512_setr_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    const __m512i shB = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    for (int i = 0; i < nb; i++) {
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 64, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 128, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 192, ER_FK_HINT);
        const float d = _cvtsh_ss(rd16(&bk[i].d));
        const __m512i scw = _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)bk[i].scales)));
        __m512i isum[ER_V512_NR];
        for (int r = 0; r < NR; r++) isum[r] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512(bk[i].ql + 64 * h);
            const __m512i QH = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h)));
            const __m512i uA = _mm512_ternarylogic_epi32(L, m0f, _mm512_and_si512(_mm512_sllv_epi16(QH, shA), m30), 0xEA);
            const __m512i uB = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L, 4), m0f,
                                                         _mm512_and_si512(_mm512_srlv_epi16(QH, shB), m30), 0xEA);
            const __m512i sA = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h]), scw);
            const __m512i sB = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h + 1]), scw);
            for (int r = 0; r < NR; r++) {
                const int8_t *qa = kq[r] + 256 * i + 128 * h;
                isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(uA, _mm512_loadu_si512(qa)), sA);
                isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(uB, _mm512_loadu_si512(qa + 64)), sB);
            }
        }
        const __m256i sc16 = _mm512_castsi512_si256(scw);
        for (int r = 0; r < NR; r++) {
            /* value = d*sc*(q-32): subtract 32 * sum_g sc_g * bsum_g */
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i))), 5);
            const __m512i t = _mm512_sub_epi32(isum[r], _mm512_zextsi256_si512(o));
            facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * kd[r][i]), facc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(facc[r]);
}

#define FZ_WRAP(name, call)                                                                     \
    static void name(const uint8_t *row, int K, const act_t *A, int b, int nr, float *res) { \
        for (int r = 0; r < nr; r++) res[r] = 0.f;                                              \
        switch (nr) {                                                                           \
        case 1: { const int NR_ = 1; call; } break;                                             \
        case 2: { const int NR_ = 2; call; } break;                                             \
        case 3: { const int NR_ = 3; call; } break;                                             \
        case 4: { const int NR_ = 4; call; } break;                                             \
        case 5: { const int NR_ = 5; call; } break;                                             \
        case 6: { const int NR_ = 6; call; } break;                                             \
        case 7: { const int NR_ = 7; call; } break;                                             \
        default: { const int NR_ = 8; call; } break;                                            \
        }                                                                                       \
    }

FZ_WRAP(fused_q4_0_q8_0_avx512, fused_q4q5_0_nr(0, row, K, A, b, NR_, res))
FZ_WRAP(fused_q5_0_q8_0_avx512, fused_q4q5_0_nr(1, row, K, A, b, NR_, res))
FZ_WRAP(fused_q8_0_q8_0_avx512, fused_q8_0_nr(row, K, A, b, NR_, res))
FZ_WRAP(fused_q4_K_q8_K_avx512, fused_q45_K_nr(0, row, K, A, b, NR_, res))
FZ_WRAP(fused_q5_K_q8_K_avx512, fused_q45_K_nr(1, row, K, A, b, NR_, res))
FZ_WRAP(fused_q6_K_q8_K_avx512, fused_q6_K_nr(row, K, A, b, NR_, res))

/* ---- B = 1 (decode) K-quant kernels over NW (<= 4) weight rows per pass: the activation loads are
 * shared by the rows, the rows give independent dependency chains, and the NW horizontal sums are
 * done together with one transposed-add tree (short rows, e.g. K = 1536, are dominated otherwise by
 * the per-row reduction and setup). Same integer products and per-block float scaling as
 * fused_q45_K_nr / fused_q6_K_nr. */

AI __m128 hsum4x16(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
    const __m512d a = _mm512_castps_pd(s01), c = _mm512_castps_pd(s23);
    const __m512 t = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, c)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, c)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

AI void pass_store(const __m512 *facc, int NW, float *out) {
    const __m512 z = _mm512_setzero_ps();
    const __m128 s = hsum4x16(facc[0], NW > 1 ? facc[1] : z, NW > 2 ? facc[2] : z, NW > 3 ? facc[3] : z);
    if (NW == 4) _mm_storeu_ps(out, s);
    else _mm_mask_storeu_ps(out, (__mmask8)((1u << NW) - 1), s);
}

/* prefetch: a pass reads [W, W + NW*rb) at NW blocks per step; block v of step i prefetches the
 * matching bytes of the next pass, W + NW*rb + (i*NW + v)*bsz, one linear stream one pass ahead */
AI const char *pass_prefetch_at(const uint8_t *W, int64_t rb, int NW, int i, int v, size_t bsz) {
    return (const char *)W + NW * rb + ((size_t)i * NW + v) * bsz;
}

AI void pass_q45_K(int five, const uint8_t *W, int64_t rb, int NW, int K, const act_t *A, float *out) {
    const int nb = K / 256;
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    const __m512i shn = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i im = _mm512_loadu_si512(IDX_K45_M);
    __m512 facc[4];
    __m256 macc[4];
    for (int v = 0; v < NW; v++) { facc[v] = _mm512_setzero_ps(); macc[v] = _mm256_setzero_ps(); }
    for (int i = 0; i < nb; i++) {
        __m512i a[4];
        for (int c = 0; c < 4; c++) a[c] = _mm512_loadu_si512(A->kq + 256 * i + 64 * c);
        const __m256i kbv = _mm256_loadu_si256((const __m256i *)(A->kb + 16 * i));
        const float da = A->kd[i];
        for (int v = 0; v < NW; v++) {
            const uint8_t *blk = W + v * rb + (size_t)i * bsz;
            const char *pp = pass_prefetch_at(W, rb, NW, i, v, bsz);
            _mm_prefetch(pp, _MM_HINT_T0);
            _mm_prefetch(pp + 64, _MM_HINT_T0);
            _mm_prefetch(pp + 128, _MM_HINT_T0);
            const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
            const __m128i sv = _mm_loadu_si128((const __m128i *)(blk + 4));
            const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(sv, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
            const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(sv, _MM_SHUFFLE(1, 1, 0, 0)), 2);
            const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
            const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
            const __m512i scw = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_or_si128(lo, hi)));
            const uint8_t *qs = blk + (five ? 48 : 16);
            __m512i qh = _mm512_setzero_si512();
            if (five) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
            __m512i isum = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
                __m512i u = _mm512_and_si512(_mm512_srlv_epi16(q, shn), m0f);
                if (five) {
                    const __m512i bit = _mm512_mask_mov_epi8(_mm512_set1_epi8((char)(1 << (2 * c))), 0xFFFFFFFF00000000ull,
                                                             _mm512_set1_epi8((char)(2 << (2 * c))));
                    u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bit), u, h16);
                }
                const __m512i sc = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_K45_SC[c]), scw);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(u, a[c]), sc);
            }
            facc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * da), facc[v]);
            const __m256i m16 = _mm512_castsi512_si256(_mm512_permutexvar_epi16(im, scw));
            const __m256i mi = _mm256_madd_epi16(m16, kbv);
            macc[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[v]);
        }
    }
    for (int v = 0; v < NW; v++) facc[v] = _mm512_sub_ps(facc[v], _mm512_insertf32x8(_mm512_setzero_ps(), macc[v], 0));
    pass_store(facc, NW, out);
}

AI void pass_q6_K(const uint8_t *W, int64_t rb, int NW, int K, const act_t *A, float *out) {
    const int nb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i shA = _mm512_setr_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    const __m512i shB = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    __m512 facc[4];
    for (int v = 0; v < NW; v++) facc[v] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m512i a[4];
        for (int c = 0; c < 4; c++) a[c] = _mm512_loadu_si512(A->kq + 256 * i + 64 * c);
        const __m256i kbv = _mm256_loadu_si256((const __m256i *)(A->kb + 16 * i));
        const float da = A->kd[i];
        for (int v = 0; v < NW; v++) {
            const block_q6_K *bk = (const block_q6_K *)(W + v * rb) + i;
            const char *pp = pass_prefetch_at(W, rb, NW, i, v, sizeof(block_q6_K));
            _mm_prefetch(pp, _MM_HINT_T0);
            _mm_prefetch(pp + 64, _MM_HINT_T0);
            _mm_prefetch(pp + 128, _MM_HINT_T0);
            _mm_prefetch(pp + 192, _MM_HINT_T0);
            const float d = _cvtsh_ss(rd16(&bk->d));
            const __m512i scw = _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)bk->scales)));
            __m512i isum = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++) {
                const __m512i L = _mm512_loadu_si512(bk->ql + 64 * h);
                const __m512i QH = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bk->qh + 32 * h)));
                const __m512i uA = _mm512_ternarylogic_epi32(L, m0f, _mm512_and_si512(_mm512_sllv_epi16(QH, shA), m30), 0xEA);
                const __m512i uB = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L, 4), m0f,
                                                             _mm512_and_si512(_mm512_srlv_epi16(QH, shB), m30), 0xEA);
                const __m512i sA = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h]), scw);
                const __m512i sB = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h + 1]), scw);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(uA, a[2 * h]), sA);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(uB, a[2 * h + 1]), sB);
            }
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(_mm512_castsi512_si256(scw), kbv), 5);
            const __m512i t = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(o));
            facc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * da), facc[v]);
        }
    }
    pass_store(facc, NW, out);
}

/* ---- B = 1 or 2, legacy types, NW weight rows per pass: each pair of 32-blocks loads its
 * activation quants, offsets and scales once for all NW rows, and decodes each weight pair once
 * for both activation rows (the row-at-a-time kernels load and decode per row) ---- */

/* Q8_0's block pair at p0 (only its first block when !two): unsigned values, lane scales in *s */
AI __m512i q8_pair(const uint8_t *p0, int two, __m512i is, __m512i x80, __m512 *s) {
    __m512i q8 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2)));
    if (two) q8 = _mm512_inserti64x4(q8, _mm256_loadu_si256((const __m256i *)(p0 + 36)), 1);
    *s = halfscales(is, _mm512_maskz_loadu_epi8(two ? bytemask(64) : bytemask(34), p0));
    return _mm512_xor_si512(q8, x80);
}

/* qt one of Q4_0, Q5_0, Q8_0; NR activation rows (1 or 2); out row r at out + r * ldy */
AI void pass_legacy(int qt, const uint8_t *W, int64_t rb, const int NW, int K, const act_t *A, const int NR,
                         int64_t ldy, float *out) {
    const q45_dec_t d = q45_dec(qt == ER_Q5_0);
    const int bs = qt == ER_Q8_0 ? 34 : d.bs, nb = K / 32;
    const __m512i is8 = _mm512_loadu_si512(IDX_Q8_0_S), x80 = _mm512_set1_epi8((char)0x80);
    __m512 acc[2][4];
    for (int r = 0; r < NR; r++)
        for (int v = 0; v < NW; v++) acc[r][v] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i += 2) {
        const int one = i + 1 == nb;
        __m512i xq[2], xo[2];
        __m512 xs[2];
        for (int r = 0; r < NR; r++) { /* 64 activation values (the low 32 only when `one`) */
            const int8_t *q = A->q + (size_t)r * K + 32 * i;
            const int32_t *n = A->n + (size_t)r * K / 4 + 8 * i;
            const float *l = A->l + (size_t)r * K / 4 + 8 * i;
            xq[r] = one ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q) : _mm512_loadu_si512(q);
            xo[r] = one ? _mm512_maskz_loadu_epi32(0xFF, n) : _mm512_loadu_si512(n);
            xs[r] = one ? _mm512_maskz_loadu_ps(0xFF, l) : _mm512_loadu_ps(l);
        }
        for (int v = 0; v < NW; v++) {
            const uint8_t *p0 = W + v * rb + (size_t)i * bs;
            const char *pp = pass_prefetch_at(W, rb, NW, i / 2, v, 2 * (size_t)bs);
            _mm_prefetch(pp, _MM_HINT_T0);
            if (2 * bs > 64) _mm_prefetch(pp + 64, _MM_HINT_T0);
            __m512 s;
            const __m512i u = qt == ER_Q8_0 ? q8_pair(p0, !one, is8, x80, &s) : q45_pair(&d, p0, !one, &s);
            for (int r = 0; r < NR; r++)
                acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(xo[r], u, xq[r])),
                                            _mm512_mul_ps(s, xs[r]), acc[r][v]);
        }
    }
    for (int r = 0; r < NR; r++) pass_store(acc[r], NW, out + r * ldy);
}

/* the legacy-type pass kernels with NW and NR as constants */
#define FWL_WRAP(name, qt)                                                                                     \
    static void name(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, int nr, int64_t ldy,  \
                            float *out) {                                                                      \
        switch (nr > 1 ? 4 + nw : nw) {                                                                        \
        case 1: pass_legacy(qt, W, rb, 1, K, A, 1, ldy, out); break;                                             \
        case 2: pass_legacy(qt, W, rb, 2, K, A, 1, ldy, out); break;                                             \
        case 3: pass_legacy(qt, W, rb, 3, K, A, 1, ldy, out); break;                                             \
        case 4: pass_legacy(qt, W, rb, 4, K, A, 1, ldy, out); break;                                             \
        case 5: pass_legacy(qt, W, rb, 1, K, A, 2, ldy, out); break;                                             \
        case 6: pass_legacy(qt, W, rb, 2, K, A, 2, ldy, out); break;                                             \
        case 7: pass_legacy(qt, W, rb, 3, K, A, 2, ldy, out); break;                                             \
        default: pass_legacy(qt, W, rb, 4, K, A, 2, ldy, out); break;                                            \
        }                                                                                                      \
    }
FWL_WRAP(pass_q4_0_q8_0_avx512, ER_Q4_0)
FWL_WRAP(pass_q5_0_q8_0_avx512, ER_Q5_0)
FWL_WRAP(pass_q8_0_q8_0_avx512, ER_Q8_0)
#undef FWL_WRAP


#define FW_WRAP(name, call)                                                                        \
    static void name(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, float *out) { \
        switch (nw) {                                                                              \
        case 1: { const int NW_ = 1; call; } break;                                                \
        case 2: { const int NW_ = 2; call; } break;                                                \
        case 3: { const int NW_ = 3; call; } break;                                                \
        default: { const int NW_ = 4; call; } break;                                               \
        }                                                                                          \
    }

FW_WRAP(pass_q4_K_q8_K_avx512, pass_q45_K(0, W, rb, NW_, K, A, out))
FW_WRAP(pass_q5_K_q8_K_avx512, pass_q45_K(1, W, rb, NW_, K, A, out))
FW_WRAP(pass_q6_K_q8_K_avx512, pass_q6_K(W, rb, NW_, K, A, out))

/* ---------------------------------------------------------- float dot products */

AI __m512 fload16(int qt, const uint8_t *row, int k, __mmask16 m) {
    if (qt == ER_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)k);
    if (qt == ER_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI void vec_dot_float_avx512_nr(int qt, const uint8_t *row, int K, const float *x, int NR, float *res) {
    __m512 acc[4], acc2[4];
    for (int r = 0; r < NR; r++) acc[r] = acc2[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = fload16(qt, row, k, 0xFFFF), w1 = fload16(qt, row, k + 16, 0xFFFF);
        for (int r = 0; r < NR; r++) {
            acc[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + (size_t)r * K + k), acc[r]);
            acc2[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + (size_t)r * K + k + 16), acc2[r]);
        }
    }
    for (; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        const __m512 wv = fload16(qt, row, k, m);
        for (int r = 0; r < NR; r++)
            acc[r] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (size_t)r * K + k), acc[r]);
    }
    for (int r = 0; r < NR; r++) res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
}


/* the float types with nr (1..4) as a constant */
#define VEC_DOT_FLOAT(name, T)                                                                  \
    static void name(const uint8_t *row, int K, const float *x, int nr, float *res) {         \
        switch (nr) {                                                                          \
        case 1: vec_dot_float_avx512_nr(T, row, K, x, 1, res); break;                          \
        case 2: vec_dot_float_avx512_nr(T, row, K, x, 2, res); break;                          \
        case 3: vec_dot_float_avx512_nr(T, row, K, x, 3, res); break;                          \
        default: vec_dot_float_avx512_nr(T, row, K, x, 4, res); break;                         \
        }                                                                                      \
    }
VEC_DOT_FLOAT(vec_dot_f32_f32_avx512, ER_F32)
VEC_DOT_FLOAT(vec_dot_f16_f32_avx512, ER_F16)
VEC_DOT_FLOAT(vec_dot_bf16_f32_avx512, ER_BF16)
#undef VEC_DOT_FLOAT

/* ---- attention: 16 positions per reduction tree, head_dim = 16 * NV ---- */

/* 16 vectors -> one vector of their 16 horizontal sums, in order */
AI __m512 hsum16x16(const __m512 *a) {
    __m512 b[8], c[4];
    for (int k = 0; k < 8; k++)
        b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 4; k++) {
        const __m512d x = _mm512_castps_pd(b[2 * k]), y = _mm512_castps_pd(b[2 * k + 1]);
        c[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

/* fast_expf on 16 lanes (same constants, EXP_*) */
AI __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* r[0..n) <- exp(r - max r) / sum, 16 lanes at a time */
AI void softmax_v512(float *r, int n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(r + j));
    const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
    if (tail) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, r + j));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    __m512 sv = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(r + j), m));
        _mm512_storeu_ps(r + j, e);
        sv = _mm512_add_ps(sv, e);
    }
    if (tail) {
        const __m512 e = _mm512_maskz_mov_ps(tail, exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(m, tail, r + j), m)));
        _mm512_mask_storeu_ps(r + j, tail, e);
        sv = _mm512_add_ps(sv, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sv));
    for (j = 0; j + 16 <= n; j += 16) _mm512_storeu_ps(r + j, _mm512_mul_ps(_mm512_loadu_ps(r + j), inv));
    if (tail) _mm512_mask_storeu_ps(r + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r + j), inv));
}

/* attn_one with AVX-512 for head_dim = 16 * NV: the scores of 16 positions per reduction tree (their
 * K rows stay in L1 for every head), then V in blocks of 32 positions (16 KiB at head_dim 128) that
 * stay in L1 while each head accumulates its output in registers */
/* 16 cache values from p (floats, or halves when F16) */
AI __m512 ld_kv512(const void *p, size_t off, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + off)))
               : _mm512_loadu_ps((const float *)p + off);
}

AI void attn_one_v512(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc, const int NV,
                             const int F16) {
    const int hd = 16 * NV, KVH = c->KVH, G = h1 - h0; /* hd == c->hd (attn_avx512) */
    const attn_span_t sp = attn_span(c, t, g, h0);
    const int n = sp.n;
    const int64_t *sl = sp.sl;
    const float *q = sp.q;
    float *o = sp.o;
    /* a half cache: each block of K (V) rows converted to floats once for all G heads (converting
     * per head cost the 0.5B, 7 heads per KV head, 9% of an 8-sequence step) */
    const int CV = F16 && G > 1;
    float kvb[32 * 16 * NV] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < n; j0 += 16) {
        const int nj = n - j0 < 16 ? n - j0 : 16;
        size_t kr[16];
        for (int jj = 0; jj < 16; jj++) kr[jj] = ((size_t)sl[j0 + (jj < nj ? jj : 0)] * KVH + g) * hd;
        /* the rows are scattered over the cache's blocks: fetch the next 16 K rows and these 16 V rows
         * (used after the softmax) ahead */
        const size_t es = F16 ? 2 : 4;
        for (int jj = j0 + 16; jj < j0 + 32 && jj < n; jj++)
            for (size_t b = 0; b < hd * es; b += 64)
                _mm_prefetch((const char *)c->kc + ((size_t)sl[jj] * KVH + g) * hd * es + b, _MM_HINT_T0);
        for (int jj = j0; jj < j0 + nj; jj++)
            for (size_t b = 0; b < hd * es; b += 64)
                _mm_prefetch((const char *)c->vc + ((size_t)sl[jj] * KVH + g) * hd * es + b, _MM_HINT_T1);
        if (CV)
            for (int jj = 0; jj < 16; jj++)
                for (int v = 0; v < NV; v++) _mm512_store_ps(kvb + jj * hd + 16 * v, ld_kv512(c->kc, kr[jj] + 16 * v, 1));
        for (int h = 0; h < G; h++) {
            const float *qh = q + (size_t)h * hd;
            __m512 acc[16];
            for (int jj = 0; jj < 16; jj++) {
                __m512 s0;
                if (CV) {
                    s0 = _mm512_mul_ps(_mm512_loadu_ps(qh), _mm512_load_ps(kvb + jj * hd));
                    for (int v = 1; v < NV; v++)
                        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * v), _mm512_load_ps(kvb + jj * hd + 16 * v), s0);
                } else {
                    s0 = _mm512_mul_ps(_mm512_loadu_ps(qh), ld_kv512(c->kc, kr[jj], F16));
                    for (int v = 1; v < NV; v++)
                        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * v), ld_kv512(c->kc, kr[jj] + 16 * v, F16), s0);
                }
                acc[jj] = s0;
            }
            _mm512_mask_storeu_ps(sc + (size_t)h * n + j0, (__mmask16)((1u << nj) - 1), hsum16x16(acc));
        }
    }
    for (int h = 0; h < G; h++) softmax_v512(sc + (size_t)h * n, n);
    for (int j0 = 0; j0 < n; j0 += 32) {
        const int j1 = j0 + 32 < n ? j0 + 32 : n;
        if (CV)
            for (int j = j0; j < j1; j++) {
                const size_t vr = ((size_t)sl[j] * KVH + g) * hd;
                for (int v = 0; v < NV; v++) _mm512_store_ps(kvb + (j - j0) * hd + 16 * v, ld_kv512(c->vc, vr + 16 * v, 1));
            }
        for (int h = 0; h < G; h++) {
            const float *r = sc + (size_t)h * n;
            float *oh = o + (size_t)h * hd;
            __m512 acc[NV];
            for (int v = 0; v < NV; v++) acc[v] = j0 ? _mm512_loadu_ps(oh + 16 * v) : _mm512_setzero_ps();
            for (int j = j0; j < j1; j++) {
                const __m512 w = _mm512_set1_ps(r[j]);
                if (CV) {
                    for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_load_ps(kvb + (j - j0) * hd + 16 * v), acc[v]);
                } else {
                    const size_t vr = ((size_t)sl[j] * KVH + g) * hd;
                    for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(w, ld_kv512(c->vc, vr + 16 * v, F16), acc[v]);
                }
            }
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(oh + 16 * v, acc[v]);
        }
    }
}

/* 0 when head_dim has no AVX-512 variant */
static int attn_avx512(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc) {
#define A5(NV_) (c->f16 ? attn_one_v512(c, t, g, h0, h1, sc, NV_, 1) : attn_one_v512(c, t, g, h0, h1, sc, NV_, 0))
    switch (c->hd) {
    case 64: A5(4); return 1;
    case 128: A5(8); return 1;
    case 256: A5(16); return 1;
    default: return 0;
    }
#undef A5
}

void er_fill_avx512(er_kernels_t *k) {
    er_type_traits_t *t = k->type;
    k->quantize_row_q8_0 = quantize_row_q8_0_avx512;
    k->quantize_row_q8_K = quantize_row_q8_K_avx512;
    k->dot_decoded = dot_decoded_q8_0_avx512;
    k->attn = attn_avx512;
    t[ER_F32].fdot = vec_dot_f32_f32_avx512;
    t[ER_F16].fdot = vec_dot_f16_f32_avx512;
    t[ER_BF16].fdot = vec_dot_bf16_f32_avx512;
    /* these replace the AVX2 table's fused kernels (the decoders stay the AVX2 ones) */
    const struct { int qt; fused_fn f; } fused[] = {
        {ER_Q4_0, fused_q4_0_q8_0_avx512}, {ER_Q5_0, fused_q5_0_q8_0_avx512}, {ER_Q8_0, fused_q8_0_q8_0_avx512},
        {ER_Q4_K, fused_q4_K_q8_K_avx512}, {ER_Q5_K, fused_q5_K_q8_K_avx512}, {ER_Q6_K, fused_q6_K_q8_K_avx512},
    };
    for (size_t i = 0; i < sizeof(fused) / sizeof(fused[0]); i++) {
        t[fused[i].qt].fused = fused[i].f;
        t[fused[i].qt].fused_nr = ER_V512_NR;
    }
    t[ER_Q4_0].pass12 = pass_q4_0_q8_0_avx512;
    t[ER_Q5_0].pass12 = pass_q5_0_q8_0_avx512;
    t[ER_Q8_0].pass12 = pass_q8_0_q8_0_avx512;
    t[ER_Q4_K].pass1 = pass_q4_K_q8_K_avx512;
    t[ER_Q5_K].pass1 = pass_q5_K_q8_K_avx512;
    t[ER_Q6_K].pass1 = pass_q6_K_q8_K_avx512;
}

#endif
