/*
 * edgerun native kernels for AVX2 + FMA + F16C (x86-64 v3): weight-row decoders, the decoded-row
 * dot core, float dot products, the fused K-quant and Q4_0 / Q8_0 row kernels (maddubs + madd,
 * 4 activation rows a pass) and the attention kernel for head sizes 64 and 128.
 * The AVX-512 table (avx512.c) keeps these decoders and replaces the rest.
 */
#if defined(__x86_64__) && !defined(ER_NO_X86)
#pragma GCC target("avx2,fma,f16c")

#include "../../attention.h"
#include "x86.h"

/* ------------------------------------------------------- weight decoding */

AI __m256i unpack_nibbles16(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* 32 bits -> 32 bytes (0 or 0xFF) mask, bit j -> byte j */
AI __m256i bits_to_bytes(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bm = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bm), bm);
}

static int decode_q4_0_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_0 *bk = (const block_q4_0 *)row;
    const __m256i off = _mm256_set1_epi8(8);
    for (int i = 0; i < K / 32; i++) {
        __m256i v = _mm256_sub_epi8(unpack_nibbles16(bk[i].qs), off);
        _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
        _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
    }
    return 0;
}

static int decode_q5_0_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_0 *bk = (const block_q5_0 *)row;
    const __m256i off = _mm256_set1_epi8(16);
    for (int i = 0; i < K / 32; i++) {
        uint32_t qh;
        memcpy(&qh, bk[i].qh, 4);
        __m256i hb = _mm256_and_si256(bits_to_bytes(qh), off);
        __m256i v = _mm256_sub_epi8(_mm256_or_si256(unpack_nibbles16(bk[i].qs), hb), off);
        _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
        _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
    }
    return 0;
}

static int decode_q4_1_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_1 *bk = (const block_q4_1 *)row;
    for (int i = 0; i < K / 32; i++) {
        _mm256_storeu_si256((__m256i *)(w + 32 * i), unpack_nibbles16(bk[i].qs));
        _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
        mw[2 * i] = mw[2 * i + 1] = _cvtsh_ss(rd16(&bk[i].m));
    }
    return 1;
}

static int decode_q5_1_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_1 *bk = (const block_q5_1 *)row;
    const __m256i h16 = _mm256_set1_epi8(16);
    for (int i = 0; i < K / 32; i++) {
        uint32_t qh;
        memcpy(&qh, bk[i].qh, 4);
        __m256i v = _mm256_or_si256(unpack_nibbles16(bk[i].qs), _mm256_and_si256(bits_to_bytes(qh), h16));
        _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
        _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
        mw[2 * i] = mw[2 * i + 1] = _cvtsh_ss(rd16(&bk[i].m));
    }
    return 1;
}

static int decode_q8_0_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q8_0 *bk = (const block_q8_0 *)row;
    for (int i = 0; i < K / 32; i++) {
        _mm256_storeu_si256((__m256i *)(w + 32 * i), _mm256_loadu_si256((const __m256i *)bk[i].qs));
        _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
    }
    return 0;
}

static int decode_q4_K_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_K *bk = (const block_q4_K *)row;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int i = 0; i < K / 256; i++) {
        const float d = _cvtsh_ss(rd16(&bk[i].d)), dmin = _cvtsh_ss(rd16(&bk[i].dmin));
        const uint8_t *sc = bk[i].scales;
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(bk[i].qs + 32 * c));
            _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c), _mm256_and_si256(q, m4));
            _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c + 32),
                                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
        }
        for (int j = 0; j < 8; j++) {
            int s, m;
            get_scale_min_k4(j, sc, &s, &m);
            _mm256_storeu_ps(wl + 64 * i + 8 * j, _mm256_set1_ps(d * (float)s));
            mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
        }
    }
    return 1;
}

static int decode_q5_K_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_K *bk = (const block_q5_K *)row;
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    for (int i = 0; i < K / 256; i++) {
        const float d = _cvtsh_ss(rd16(&bk[i].d)), dmin = _cvtsh_ss(rd16(&bk[i].dmin));
        const uint8_t *sc = bk[i].scales;
        const __m256i qh = _mm256_loadu_si256((const __m256i *)bk[i].qh);
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(bk[i].qs + 32 * c));
            __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
            __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_slli_epi16(h1, 4));
            _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c), lo);
            _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c + 32), hi);
        }
        for (int j = 0; j < 8; j++) {
            int s, m;
            get_scale_min_k4(j, sc, &s, &m);
            _mm256_storeu_ps(wl + 64 * i + 8 * j, _mm256_set1_ps(d * (float)s));
            mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
        }
    }
    return 1;
}

static int decode_q6_K_avx2(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q6_K *bk = (const block_q6_K *)row;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    for (int i = 0; i < K / 256; i++) {
        const float d = _cvtsh_ss(rd16(&bk[i].d));
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = bk[i].ql + 64 * h;
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h));
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            int8_t *o = w + 256 * i + 128 * h;
            __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
            __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
            _mm256_storeu_si256((__m256i *)o, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off));
            _mm256_storeu_si256((__m256i *)(o + 32),
                                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off));
            _mm256_storeu_si256((__m256i *)(o + 64),
                                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off));
            _mm256_storeu_si256((__m256i *)(o + 96),
                                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off));
        }
        /* lane scales: d * scales[g] repeated 4x */
        __m128i s8 = _mm_loadu_si128((const __m128i *)bk[i].scales);
        __m256 sf0 = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8)));
        __m256 sf1 = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s8, 8))));
        float tmp[16];
        _mm256_storeu_ps(tmp, sf0);
        _mm256_storeu_ps(tmp + 8, sf1);
        for (int g = 0; g < 16; g++) _mm_storeu_ps(wl + 64 * i + 4 * g, _mm_set1_ps(tmp[g]));
    }
    return 0;
}


/* ---------------------------------------------------------- decoded-row dot core */

AI void dot_decoded_avx2_nr(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int NR,
                            float *res) {
    __m256 acc[4];
    const int8_t *q[4];
    const float *xl[4];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < NR; r++) {
        acc[r] = _mm256_setzero_ps();
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
    }
    __m256 acc2[4];
    for (int r = 0; r < NR; r++) acc2[r] = _mm256_setzero_ps();
#define AVX2_CHUNK(ACC, c_)                                                                                     \
    {                                                                                                           \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + (c_)));                                     \
        const __m256i aw = _mm256_sign_epi8(wv, wv);                                                            \
        const __m256 s = _mm256_loadu_ps(wl + (c_) / 4);                                                        \
        for (int r = 0; r < NR; r++) {                                                                          \
            __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q[r] + (c_))), wv);               \
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, a), ones);                                   \
            ACC[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(s, _mm256_loadu_ps(xl[r] + (c_) / 4)), ACC[r]); \
        }                                                                                                       \
    }
    int c = 0;
    for (; c + 64 <= K; c += 64) {
        AVX2_CHUNK(acc, c);
        AVX2_CHUNK(acc2, c + 32);
    }
    if (c < K) AVX2_CHUNK(acc, c);
#undef AVX2_CHUNK
    for (int r = 0; r < NR; r++) acc[r] = _mm256_add_ps(acc[r], acc2[r]);
    if (mw) {
        const int G = K / 16;
        for (int r = 0; r < NR; r++) {
            const float *xs = A->s + (size_t)(b + r) * G;
            int g = 0;
            for (; g + 8 <= G; g += 8)
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(mw + g), _mm256_loadu_ps(xs + g), acc[r]);
            float t = 0.f;
            for (; g < G; g++) t += mw[g] * xs[g];
            res[r] = hsum256(acc[r]) + t;
        }
    } else {
        for (int r = 0; r < NR; r++) res[r] = hsum256(acc[r]);
    }
}

static void dot_decoded_q8_0_avx2(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                             float *res) {
    switch (nr) {
    case 1: dot_decoded_avx2_nr(w, wl, mw, K, A, b, 1, res); break;
    case 2: dot_decoded_avx2_nr(w, wl, mw, K, A, b, 2, res); break;
    case 3: dot_decoded_avx2_nr(w, wl, mw, K, A, b, 3, res); break;
    default: dot_decoded_avx2_nr(w, wl, mw, K, A, b, 4, res); break;
    }
}

/* ---------------------------------------------------------- float dot products */

AI __m256 fload8(int qt, const uint8_t *row, int k) {
    if (qt == ER_F32) return _mm256_loadu_ps((const float *)row + k);
    const __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k));
    if (qt == ER_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI void vec_dot_float_avx2_nr(int qt, const uint8_t *row, int K, const float *x, int NR, float *res) {
    __m256 acc[4], acc2[4];
    for (int r = 0; r < NR; r++) acc[r] = acc2[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = fload8(qt, row, k), w1 = fload8(qt, row, k + 8);
        for (int r = 0; r < NR; r++) {
            acc[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)r * K + k), acc[r]);
            acc2[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)r * K + k + 8), acc2[r]);
        }
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 wv = fload8(qt, row, k);
        for (int r = 0; r < NR; r++) acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)r * K + k), acc[r]);
    }
    for (int r = 0; r < NR; r++) {
        float t = hsum256(_mm256_add_ps(acc[r], acc2[r]));
        for (int kk = k; kk < K; kk++) t += fw_scalar(qt, row, kk) * x[(size_t)r * K + kk];
        res[r] = t;
    }
}

/* the float types with nr (1..4) as a constant */
#define VEC_DOT_FLOAT(name, T)                                                                  \
    static void name(const uint8_t *row, int K, const float *x, int nr, float *res) {         \
        switch (nr) {                                                                          \
        case 1: vec_dot_float_avx2_nr(T, row, K, x, 1, res); break;                            \
        case 2: vec_dot_float_avx2_nr(T, row, K, x, 2, res); break;                            \
        case 3: vec_dot_float_avx2_nr(T, row, K, x, 3, res); break;                            \
        default: vec_dot_float_avx2_nr(T, row, K, x, 4, res); break;                           \
        }                                                                                      \
    }
VEC_DOT_FLOAT(vec_dot_f32_f32_avx2, ER_F32)
VEC_DOT_FLOAT(vec_dot_f16_f32_avx2, ER_F16)
VEC_DOT_FLOAT(vec_dot_bf16_f32_avx2, ER_BF16)
#undef VEC_DOT_FLOAT

/* ---- fused row kernels ---- */

/* ---- fused AVX2 K-quant kernels (Q8_K-style activations; maddubs + madd with the sub-block scales) ---- */

AI __m128i kscales_sse(const uint8_t *p12) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p12);
    const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
    const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2);
    const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    return _mm_or_si128(lo, hi); /* [sc0..7, m0..7] */
}

#define FA_SETUP()                                                      \
    const int nb = K / 256;                                             \
    __m256 facc[4], macc[4];                                            \
    const int8_t *kq[4];                                                \
    const float *kd[4];                                                 \
    const int16_t *kb[4];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        facc[r] = _mm256_setzero_ps();                                  \
        macc[r] = _mm256_setzero_ps();                                  \
        kq[r] = A->kq + (size_t)(b + r) * K;                            \
        kd[r] = A->kd + (size_t)(b + r) * nb;                           \
        kb[r] = A->kb + (size_t)(b + r) * (K / 16);                     \
    }

AI void fused_q45_K_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FA_SETUP();
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i m0f = _mm256_set1_epi8(15), h16 = _mm256_set1_epi8(16);
    const __m128i midx = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * bsz;
        _mm_prefetch((const char *)blk + 1024, _MM_HINT_T0);
        _mm_prefetch((const char *)blk + 1024 + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)blk + 1024 + 128, _MM_HINT_T0);
        const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
        const __m128i sc8 = kscales_sse(blk + 4);
        uint8_t scb[16];
        _mm_storeu_si128((__m128i *)scb, sc8);
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, midx));
        const uint8_t *qs = blk + (five ? 48 : 16);
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        __m256i isum[4];
        for (int r = 0; r < NR; r++) isum[r] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m0f), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0f);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c), 4), h16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c + 1), 4), h16));
            }
            const __m256i s0 = _mm256_set1_epi16(scb[2 * c]), s1 = _mm256_set1_epi16(scb[2 * c + 1]);
            for (int r = 0; r < NR; r++) {
                const int8_t *qa = kq[r] + 256 * i + 64 * c;
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)qa)), s0);
                const __m256i p1 =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qa + 32))), s1);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p0, p1));
            }
        }
        for (int r = 0; r < NR; r++) {
            const float da = kd[r][i];
            facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * da), facc[r]);
            const __m256i mi = _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i)));
            macc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(facc[r]) - hsum256(macc[r]);
}

static const uint8_t IDX_Q6K_A2[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

AI void fused_q6_K_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FA_SETUP();
    (void)macc;
    const block_q6_K *bk = (const block_q6_K *)row;
    const __m256i m0f = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    for (int i = 0; i < nb; i++) {
        _mm_prefetch((const char *)&bk[i] + 1024, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 192, _MM_HINT_T0);
        const float d = _cvtsh_ss(rd16(&bk[i].d));
        const __m128i sc = _mm_loadu_si128((const __m128i *)bk[i].scales);
        __m256i isum[4];
        for (int r = 0; r < NR; r++) isum[r] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(bk[i].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(bk[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h));
            __m256i u[4];
            u[0] = _mm256_or_si256(_mm256_and_si256(l0, m0f), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            u[1] = _mm256_or_si256(_mm256_and_si256(l1, m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int j = 0; j < 4; j++) {
                const __m256i sv = _mm256_cvtepi8_epi16(
                    _mm_shuffle_epi8(sc, _mm_loadu_si128((const __m128i *)IDX_Q6K_A2[4 * h + j])));
                for (int r = 0; r < NR; r++) {
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(kq[r] + 256 * i + 128 * h + 32 * j));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u[j], a), sv));
                }
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc);
        for (int r = 0; r < NR; r++) {
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i))), 5);
            facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[r], o)), _mm256_set1_ps(d * kd[r][i]), facc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(facc[r]);
}

#define FA_WRAP(name, call)                                                                     \
    static void name(const uint8_t *row, int K, const act_t *A, int b, int nr, float *res) { \
        for (int r = 0; r < nr; r++) res[r] = 0.f;                                              \
        switch (nr) {                                                                           \
        case 1: { const int NR_ = 1; call; } break;                                             \
        case 2: { const int NR_ = 2; call; } break;                                             \
        case 3: { const int NR_ = 3; call; } break;                                             \
        default: { const int NR_ = 4; call; } break;                                            \
        }                                                                                       \
    }

FA_WRAP(fused_q4_K_q8_K_avx2, fused_q45_K_nr(0, row, K, A, b, NR_, res))
FA_WRAP(fused_q5_K_q8_K_avx2, fused_q45_K_nr(1, row, K, A, b, NR_, res))
FA_WRAP(fused_q6_K_q8_K_avx2, fused_q6_K_nr(row, K, A, b, NR_, res))

/* legacy Q4_0 / Q8_0 on AVX2: per-32 activations, one float FMA per block */
AI void fused_q4q8_0_nr(int eight, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    const int nb = K / 32;
    __m256 acc[4], acc2[4];
    float off[4];
    const int8_t *q[4];
    const float *xl[4], *s32[4];
    for (int r = 0; r < NR; r++) {
        acc[r] = acc2[r] = _mm256_setzero_ps();
        off[r] = 0.f;
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
        s32[r] = A->s32 + (size_t)(b + r) * nb;
    }
    const __m256i m0f = _mm256_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < nb; i++) {
        __m256i u, wv = _mm256_setzero_si256();
        float dw;
        if (eight) {
            const block_q8_0 *bk = (const block_q8_0 *)row + i;
            wv = _mm256_loadu_si256((const __m256i *)bk->qs);
            u = _mm256_sign_epi8(wv, wv);
            dw = _cvtsh_ss(rd16(&bk->d));
        } else {
            const block_q4_0 *bk = (const block_q4_0 *)row + i;
            const __m128i qq = _mm_loadu_si128((const __m128i *)bk->qs);
            u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), m0f);
            dw = _cvtsh_ss(rd16(&bk->d));
        }
        for (int r = 0; r < NR; r++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(q[r] + 32 * i));
            if (eight) a = _mm256_sign_epi8(a, wv);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones);
            const __m256 sc = _mm256_set1_ps(dw * xl[r][8 * i]);
            if (i & 1) acc2[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc2[r]);
            else acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r]);
            if (!eight) off[r] += dw * s32[r][i];
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(_mm256_add_ps(acc[r], acc2[r])) - 8.f * off[r];
}

FA_WRAP(fused_q4_0_q8_0_avx2, fused_q4q8_0_nr(0, row, K, A, b, NR_, res))
FA_WRAP(fused_q8_0_q8_0_avx2, fused_q4q8_0_nr(1, row, K, A, b, NR_, res))

/* ---- attention: 8 positions per reduction tree, head_dim = 8 * NV ---- */

/* 8 vectors -> one vector of their 8 horizontal sums, in order */
AI __m256 hsum8x8(const __m256 *a) {
    const __m256 b0 = _mm256_hadd_ps(a[0], a[1]), b1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 b2 = _mm256_hadd_ps(a[4], a[5]), b3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 c0 = _mm256_hadd_ps(b0, b1), c1 = _mm256_hadd_ps(b2, b3);
    /* c0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low / high 128-bit halves of each input), c1 likewise */
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20), _mm256_permute2f128_ps(c0, c1, 0x31));
}

/* fast_expf on 8 lanes */
AI __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AI void softmax_avx2(float *r, int n) {
    float m = -INFINITY;
    for (int j = 0; j < n; j++) m = r[j] > m ? r[j] : m;
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sv = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(r + j), mv));
        _mm256_storeu_ps(r + j, e);
        sv = _mm256_add_ps(sv, e);
    }
    float sum = hsum256(sv);
    for (; j < n; j++) { r[j] = fast_expf(r[j] - m); sum += r[j]; }
    const float inv = 1.f / sum;
    for (j = 0; j < n; j++) r[j] *= inv;
}

/* 8 cache values from p (floats, or halves when F16) */
AI __m256 ld_kv256(const void *p, size_t off, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + off)))
               : _mm256_loadu_ps((const float *)p + off);
}

AI void attn_one_avx2(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc, const int NV,
                             const int F16) {
    const int hd = 8 * NV, KVH = c->KVH, G = h1 - h0; /* hd == c->hd (attn_avx2) */
    const attn_span_t sp = attn_span(c, t, g, h0);
    const int n = sp.n;
    for (int j0 = 0; j0 < n; j0 += 8) {
        const int nj = n - j0 < 8 ? n - j0 : 8;
        size_t kr[8];
        for (int jj = 0; jj < 8; jj++) kr[jj] = ((size_t)sp.sl[j0 + (jj < nj ? jj : 0)] * KVH + g) * hd;
        for (int h = 0; h < G; h++) {
            const float *qh = sp.q + (size_t)h * hd;
            __m256 acc[8];
            for (int jj = 0; jj < 8; jj++) {
                __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(qh), ld_kv256(c->kc, kr[jj], F16));
                for (int v = 1; v < NV; v++)
                    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * v), ld_kv256(c->kc, kr[jj] + 8 * v, F16), s0);
                acc[jj] = s0;
            }
            float tmp[8];
            _mm256_storeu_ps(tmp, hsum8x8(acc));
            memcpy(sc + (size_t)h * n + j0, tmp, sizeof(float) * (size_t)nj);
        }
    }
    for (int h = 0; h < G; h++) softmax_avx2(sc + (size_t)h * n, n);
    for (int j0 = 0; j0 < n; j0 += 32) {
        const int j1 = j0 + 32 < n ? j0 + 32 : n;
        for (int h = 0; h < G; h++) {
            const float *r = sc + (size_t)h * n;
            float *oh = sp.o + (size_t)h * hd;
            __m256 acc[NV];
            for (int v = 0; v < NV; v++) acc[v] = j0 ? _mm256_loadu_ps(oh + 8 * v) : _mm256_setzero_ps();
            for (int j = j0; j < j1; j++) {
                const size_t vr = ((size_t)sp.sl[j] * KVH + g) * hd;
                const __m256 w = _mm256_set1_ps(r[j]);
                for (int v = 0; v < NV; v++) acc[v] = _mm256_fmadd_ps(w, ld_kv256(c->vc, vr + 8 * v, F16), acc[v]);
            }
            for (int v = 0; v < NV; v++) _mm256_storeu_ps(oh + 8 * v, acc[v]);
        }
    }
}

/* 0 when head_dim has no AVX2 variant */
static int attn_avx2(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc) {
#define A2(NV_) (c->f16 ? attn_one_avx2(c, t, g, h0, h1, sc, NV_, 1) : attn_one_avx2(c, t, g, h0, h1, sc, NV_, 0))
    switch (c->hd) {
    case 64: A2(8); return 1;
    case 128: A2(16); return 1;
    default: return 0;
    }
#undef A2
}

void er_fill_avx2(er_kernels_t *k) {
    er_type_traits_t *t = k->type;
    k->dot_decoded = dot_decoded_q8_0_avx2;
    k->attn = attn_avx2;
    t[ER_F32].fdot = vec_dot_f32_f32_avx2;
    t[ER_F16].fdot = vec_dot_f16_f32_avx2;
    t[ER_BF16].fdot = vec_dot_bf16_f32_avx2;
    t[ER_Q4_0].decode = decode_q4_0_avx2;
    t[ER_Q4_1].decode = decode_q4_1_avx2;
    t[ER_Q5_0].decode = decode_q5_0_avx2;
    t[ER_Q5_1].decode = decode_q5_1_avx2;
    t[ER_Q8_0].decode = decode_q8_0_avx2;
    t[ER_Q4_K].decode = decode_q4_K_avx2;
    t[ER_Q5_K].decode = decode_q5_K_avx2;
    t[ER_Q6_K].decode = decode_q6_K_avx2;
    const struct { int qt; fused_fn f; } fused[] = {
        {ER_Q4_0, fused_q4_0_q8_0_avx2}, {ER_Q8_0, fused_q8_0_q8_0_avx2}, {ER_Q4_K, fused_q4_K_q8_K_avx2},
        {ER_Q5_K, fused_q5_K_q8_K_avx2}, {ER_Q6_K, fused_q6_K_q8_K_avx2},
    };
    for (size_t i = 0; i < sizeof(fused) / sizeof(fused[0]); i++) {
        t[fused[i].qt].fused = fused[i].f;
        t[fused[i].qt].fused_nr = 4;
    }
}

#endif
