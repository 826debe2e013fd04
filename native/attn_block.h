/* Fused attention block for the CPU-only mode, run per layer by er_layers (end of this file).
 *
 * Included at the end of edgerun_kernels.c (it uses the thread pool, the matmul and norm
 * entry points defined there). For T new tokens of a batch of sequences:
 *   n = rms_norm(x) * norm_w
 *   q, k, v = n @ Wq^T (+bq), n @ Wk^T (+bk), n @ Wv^T (+bv)    (T, H*hd), (T, KVH*hd)
 *   optional per-head QK-norm; RoPE at position * pos_scale; q *= attn_scale
 *   k, v written to the paged cache at write_slots[t]
 *   a = causal (optionally sliding-window) GQA softmax attention over each sequence's slots
 *   o = a @ Wo^T, optional post-norm; out = x + o
 * Sequence s's cache positions 0..ctx_len[s]-1 live at read_slots[read_off[s] + j].
 */

#define ER_MAX_HD 1024 /* the largest head size taken */

typedef struct {
    const float *q;
    const void *kc, *vc; /* float, or IEEE half when f16 */
    const int64_t *rslots, *roff;
    const int32_t *tok_seq, *pos;
    int H, KVH, hd, window, max_ctx;
    float *out;
    int nsplit, f16;
} attn_ctx_t;

/* the K or V row of cache slot `slot`, KV head g, as floats: in place for a float cache, else
 * converted into tmp (hd floats) */
AI const float *kv_row(const attn_ctx_t *c, const void *base, int64_t slot, int g, float *tmp) {
    const size_t off = ((size_t)slot * c->KVH + g) * c->hd;
    if (!c->f16) return (const float *)base + off;
    const uint16_t *h = (const uint16_t *)base + off;
    for (int d = 0; d < c->hd; d++) tmp[d] = h2f(h[d]);
    return tmp;
}

/* a . b over n floats (n a multiple of 16 vectorizes fully) */
AI float er_dotf(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0.f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* what token t attends to from KV head g: n cache positions at slots sl (causal, windowed),
 * and the query / output rows of its query heads from h0 on */
typedef struct {
    int n;
    const int64_t *sl;
    const float *q;
    float *o;
} attn_span_t;

AI attn_span_t attn_span(const attn_ctx_t *c, int t, int g, int h0) {
    const int pos = c->pos[t];
    const int lo = c->window > 0 && pos - c->window + 1 > 0 ? pos - c->window + 1 : 0;
    const size_t head0 = (size_t)t * c->H + (size_t)g * (c->H / c->KVH) + h0;
    const attn_span_t sp = {pos - lo + 1, c->rslots + c->roff[c->tok_seq[t]] + lo, c->q + head0 * c->hd,
                            c->out + head0 * c->hd};
    return sp;
}

/* token t, KV head g, its query heads [h0, h1) of the G = H / KVH sharing g: each K and V row is
 * read once for all of them (generic code; see attn_one_v512 for the AVX-512 one) */
ER_CLONES static void attn_one(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc) {
    const int hd = c->hd, G = h1 - h0;
    float tmp[ER_MAX_HD];
    const attn_span_t sp = attn_span(c, t, g, h0);
    const int n = sp.n;
    const int64_t *sl = sp.sl;
    const float *q = sp.q;
    float *o = sp.o;
    for (int j = 0; j < n; j++) {
        const float *kr = kv_row(c, c->kc, sl[j], g, tmp);
        for (int h = 0; h < G; h++) sc[(size_t)h * n + j] = er_dotf(q + (size_t)h * hd, kr, hd);
    }
    for (int h = 0; h < G; h++) {
        float *r = sc + (size_t)h * n;
        float m = -INFINITY;
        for (int j = 0; j < n; j++) m = r[j] > m ? r[j] : m;
        for (int j = 0; j < n; j++) r[j] = fast_expf(r[j] - m);
        float sum = 0.f;
        for (int j = 0; j < n; j++) sum += r[j];
        const float inv = 1.f / sum;
        for (int j = 0; j < n; j++) r[j] *= inv;
        memset(o + (size_t)h * hd, 0, sizeof(float) * (size_t)hd);
    }
    for (int j = 0; j < n; j++) {
        const float *vr = kv_row(c, c->vc, sl[j], g, tmp);
        for (int h = 0; h < G; h++) {
            const float w = sc[(size_t)h * n + j];
            float *oh = o + (size_t)h * hd;
            for (int d = 0; d < hd; d++) oh[d] += w * vr[d];
        }
    }
}

#ifdef ER_X86
/* 16 vectors -> one vector of their 16 horizontal sums, in order */
T_V512 AI __m512 hsum16x16(const __m512 *a) {
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
T_V512 AI __m512 exp512(__m512 x) {
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
T_V512 AI void softmax_v512(float *r, int n) {
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
T_V512 AI __m512 ld_kv512(const void *p, size_t off, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + off)))
               : _mm512_loadu_ps((const float *)p + off);
}

T_V512 AI void attn_one_v512(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc, const int NV,
                             const int F16) {
    const int hd = 16 * NV, KVH = c->KVH, G = h1 - h0; /* hd == c->hd (attn_one_v512_hd) */
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

/* ---- the same with AVX2 (8 lanes): 8 positions per reduction tree, head_dim = 8 * NV ---- */

/* 8 vectors -> one vector of their 8 horizontal sums, in order */
T_AVX2 AI __m256 hsum8x8(const __m256 *a) {
    const __m256 b0 = _mm256_hadd_ps(a[0], a[1]), b1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 b2 = _mm256_hadd_ps(a[4], a[5]), b3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 c0 = _mm256_hadd_ps(b0, b1), c1 = _mm256_hadd_ps(b2, b3);
    /* c0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low / high 128-bit halves of each input), c1 likewise */
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20), _mm256_permute2f128_ps(c0, c1, 0x31));
}

/* fast_expf on 8 lanes */
T_AVX2 AI __m256 exp256(__m256 x) {
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

T_AVX2 AI void softmax_avx2(float *r, int n) {
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
T_AVX2 AI __m256 ld_kv256(const void *p, size_t off, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + off)))
               : _mm256_loadu_ps((const float *)p + off);
}

T_AVX2 AI void attn_one_avx2(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc, const int NV,
                             const int F16) {
    const int hd = 8 * NV, KVH = c->KVH, G = h1 - h0; /* hd == c->hd (attn_one_avx2_hd) */
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
T_AVX2 static int attn_one_avx2_hd(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc) {
#define A2(NV_) (c->f16 ? attn_one_avx2(c, t, g, h0, h1, sc, NV_, 1) : attn_one_avx2(c, t, g, h0, h1, sc, NV_, 0))
    switch (c->hd) {
    case 64: A2(8); return 1;
    case 128: A2(16); return 1;
    default: return 0;
    }
#undef A2
}

/* 0 when head_dim has no AVX-512 variant */
T_V512 static int attn_one_v512_hd(const attn_ctx_t *c, int t, int g, int h0, int h1, float *sc) {
#define A5(NV_) (c->f16 ? attn_one_v512(c, t, g, h0, h1, sc, NV_, 1) : attn_one_v512(c, t, g, h0, h1, sc, NV_, 0))
    switch (c->hd) {
    case 64: A5(4); return 1;
    case 128: A5(8); return 1;
    case 256: A5(16); return 1;
    default: return 0;
    }
#undef A5
}
#endif

/* jobs i = (t * KVH + g) * nsplit + part: part of the query heads of KV head g (nsplit > 1 only
 * when there are fewer (token, KV head) pairs than threads) */
static void attn_task(void *p, int i0, int i1) {
    const attn_ctx_t *c = p;
    const int G = c->H / c->KVH, ns = c->nsplit, per = (G + ns - 1) / ns;
    float *sc = scratch(11, sizeof(float) * (size_t)per * (size_t)(c->max_ctx > 0 ? c->max_ctx : 1));
    if (!sc) return;
    for (int i = i0; i < i1; i++) {
        const int tg = i / ns, h0 = (i % ns) * per, h1 = h0 + per < G ? h0 + per : G;
        if (h0 >= h1) continue;
#ifdef ER_X86
        if (g_isa >= ISA_AVX512VNNI && attn_one_v512_hd(c, tg / c->KVH, tg % c->KVH, h0, h1, sc)) continue;
        if (g_isa == ISA_AVX2 && attn_one_avx2_hd(c, tg / c->KVH, tg % c->KVH, h0, h1, sc)) continue;
#endif
        attn_one(c, tg / c->KVH, tg % c->KVH, h0, h1, sc);
    }
}

/* inverse frequencies base^(-2i/hd), i < hd/2, for the last few (base, hd) pairs asked for */
static const double *rope_inv_freq(float base, int hd) {
    enum { NCACHE = 4, MAXHALF = 512 };
    static _Thread_local struct { float base; int hd; double f[MAXHALF]; } cache[NCACHE];
    static _Thread_local int next = 0;
    if (hd / 2 > MAXHALF) return NULL;
    for (int e = 0; e < NCACHE; e++)
        if (cache[e].hd == hd && cache[e].base == base) return cache[e].f;
    const int e = next;
    next = (next + 1) % NCACHE;
    for (int i = 0; i < hd / 2; i++) cache[e].f[i] = pow((double)base, -2.0 * i / hd);
    cache[e].base = base;
    cache[e].hd = hd;
    return cache[e].f;
}

/* cos/sin (T, hd/2) of pos[t] * pos_scale * base^(-2i/hd), in double like the reference */
static void rope_angles(const int32_t *pos, float pos_scale, int T, int hd, float base, float *cs, float *sn) {
    const double *f = rope_inv_freq(base, hd);
    const int half = hd / 2;
    for (int t = 0; t < T; t++) {
        const double p = (double)((float)pos[t] * pos_scale);
        for (int i = 0; i < half; i++) {
            const double th = p * (f ? f[i] : pow((double)base, -2.0 * i / hd));
            cs[(size_t)t * half + i] = (float)cos(th);
            sn[(size_t)t * half + i] = (float)sin(th);
        }
    }
}

/* RoPE of (T, nh, hd) in place at the angles cs/sn (T, hd/2); neox pairs (i, i+hd/2), else (2i, 2i+1) */
static void rope_apply(float *x, const float *cs, const float *sn, int T, int nh, int hd, int neox) {
    const int half = hd / 2;
    for (int t = 0; t < T; t++) {
        const float *ct = cs + (size_t)t * half, *st = sn + (size_t)t * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + ((size_t)t * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                const int a0 = neox ? i : 2 * i, a1 = neox ? i + half : 2 * i + 1;
                const float a = v[a0], b = v[a1];
                v[a0] = a * ct[i] - b * st[i];
                v[a1] = a * st[i] + b * ct[i];
            }
        }
    }
}

static int attn_block_impl(const float *x, int T, int D, const float *norm_w, float eps,
                         int qt_q, const void *Wq, int64_t rb_q, const float *bq,
                         int qt_k, const void *Wk, int64_t rb_k, const float *bk,
                         int qt_v, const void *Wv, int64_t rb_v, const float *bv,
                         int qt_o, const void *Wo, int64_t rb_o,
                         const float *q_norm, const float *k_norm, const float *post_norm,
                         int H, int KVH, int hd, int neox, float rope_base, float pos_scale,
                         float attn_scale, int window, const int32_t *pos, void *kcache, void *vcache, int kv_f16,
                         const int64_t *write_slots, const int32_t *tok_seq, const int64_t *read_slots,
                         const int64_t *read_off, int max_ctx, float *out) {
    if (g_isa < 0) detect_isa();
    if (H <= 0 || KVH <= 0 || H % KVH || hd <= 0 || hd % 2 || hd > ER_MAX_HD) return -1;
    const int QD = H * hd, KD = KVH * hd;
    int rc = 0;
    float *nx = scratch(17, sizeof(float) * (size_t)T * D);
    float *q = scratch(18, sizeof(float) * (size_t)T * QD);
    float *k = scratch(19, sizeof(float) * (size_t)T * KD);
    float *v = scratch(20, sizeof(float) * (size_t)T * KD);
    float *a = scratch(21, sizeof(float) * (size_t)T * QD);
    float *o = scratch(22, sizeof(float) * (size_t)T * D);
    float *cs = scratch(23, sizeof(float) * (size_t)T * (hd / 2));
    float *sn = scratch(24, sizeof(float) * (size_t)T * (hd / 2));
    if (!nx || !q || !k || !v || !a || !o || !cs || !sn) { rc = -2; goto done; }
    er_rms_norm(x, norm_w, nx, T, D, eps);
    {
        const int qts[3] = {qt_q, qt_k, qt_v}, ns[3] = {QD, KD, KD};
        const void *const ws[3] = {Wq, Wk, Wv};
        const int64_t rbs[3] = {rb_q, rb_k, rb_v};
        float *const ys[3] = {q, k, v};
        if ((rc = matmul_multi(3, qts, ws, rbs, ns, D, nx, T, ys))) goto done;
    }
    for (int t = 0; t < T; t++) {
        if (bq) for (int i = 0; i < QD; i++) q[(size_t)t * QD + i] += bq[i];
        if (bk) for (int i = 0; i < KD; i++) k[(size_t)t * KD + i] += bk[i];
        if (bv) for (int i = 0; i < KD; i++) v[(size_t)t * KD + i] += bv[i];
    }
    if (q_norm) er_rms_norm(q, q_norm, q, T * H, hd, eps);
    if (k_norm) er_rms_norm(k, k_norm, k, T * KVH, hd, eps);
    rope_angles(pos, pos_scale, T, hd, rope_base, cs, sn);
    rope_apply(q, cs, sn, T, H, hd, neox);
    rope_apply(k, cs, sn, T, KVH, hd, neox);
    for (size_t i = 0; i < (size_t)T * QD; i++) q[i] *= attn_scale;
    for (int t = 0; t < T; t++) {
        const size_t dst = (size_t)write_slots[t] * KD, src = (size_t)t * KD;
        if (kv_f16) {
            er_f32_to_f16(k + src, (uint16_t *)kcache + dst, KD);
            er_f32_to_f16(v + src, (uint16_t *)vcache + dst, KD);
        } else {
            memcpy((float *)kcache + dst, k + src, sizeof(float) * KD);
            memcpy((float *)vcache + dst, v + src, sizeof(float) * KD);
        }
    }
    {
        const int64_t work = (int64_t)T * H * (max_ctx > 0 ? max_ctx : 1) * hd;
        const int nt = nthreads() > 1 && work >= (1 << 15) ? nthreads() : 1, G = H / KVH;
        int ns = T * KVH >= nt ? 1 : (nt + T * KVH - 1) / (T * KVH);
        if (ns > G) ns = G;
        attn_ctx_t c = {q, kcache, vcache, read_slots, read_off, tok_seq, pos, H, KVH, hd, window, max_ctx, a, ns,
                        kv_f16};
        pool_run(attn_task, &c, T * KVH * ns, nt, 1);
    }
    if ((rc = er_matmul(qt_o, Wo, rb_o, D, QD, a, T, o))) goto done;
    if (post_norm) er_rms_norm(o, post_norm, o, T, D, eps);
    for (size_t i = 0; i < (size_t)T * D; i++) out[i] = x[i] + o[i];
done:
    return rc;
}


/* ---- the whole layer stack of a CPU-only step in one call ----
 * Per layer: the attention block above, then the FFN (with Gemma's post-norm), x updated in place.
 * The constants of each layer come in an er_layer_t that the Python side builds once per model;
 * every field is 8 bytes wide, so the ctypes mirror needs no padding rules. */
typedef struct {
    const float *attn_norm, *bq, *bk, *bv, *q_norm, *k_norm, *post_attn_norm;
    const void *wq, *wk, *wv, *wo;
    int64_t qt_q, qt_k, qt_v, qt_o, rb_q, rb_k, rb_v, rb_o;
    int64_t n_heads, n_kv_heads, head_dim, neox, window;
    double rope_base, pos_scale, attn_scale;
    const float *ffn_norm, *post_ffn_norm;
    const void *wg, *wu, *wd;
    int64_t qt_g, qt_u, qt_d, rb_g, rb_u, rb_d, ffn_dim, act;
} er_layer_t;

ER_API int64_t er_layer_size(void) { return (int64_t)sizeof(er_layer_t); }

static int layers_impl(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, float *x,
                       int T, int D, float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
                       const int64_t *read_slots, const int64_t *read_off, int max_ctx) {
    float *h = amalloc(sizeof(float) * (size_t)T * D);
    if (!h) return -2;
    int rc = 0;
    for (int i = 0; i < n_layers && !rc; i++) {
        const er_layer_t *l = &L[i];
        rc = attn_block_impl(x, T, D, l->attn_norm, eps, (int)l->qt_q, l->wq, l->rb_q, l->bq, (int)l->qt_k, l->wk,
                             l->rb_k, l->bk, (int)l->qt_v, l->wv, l->rb_v, l->bv, (int)l->qt_o, l->wo, l->rb_o,
                             l->q_norm, l->k_norm, l->post_attn_norm, (int)l->n_heads, (int)l->n_kv_heads,
                             (int)l->head_dim, (int)l->neox, (float)l->rope_base, (float)l->pos_scale,
                             (float)l->attn_scale, (int)l->window, pos, kc[i], vc[i], kv_f16, write_slots, tok_seq,
                             read_slots, read_off, max_ctx, h);
        if (!rc)
            rc = ffn_impl(h, l->ffn_norm, eps, (int)l->qt_g, l->wg, l->rb_g, (int)l->qt_u, l->wu, l->rb_u,
                          (int)l->qt_d, l->wd, l->rb_d, D, (int)l->ffn_dim, T, (int)l->act, l->post_ffn_norm, x);
    }
    free(h);
    return rc;
}

/* kc / vc: per layer, the K and V caches (float, or IEEE half when kv_f16) */
ER_API int er_layers(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, float *x, int T,
                     int D, float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
                     const int64_t *read_slots, const int64_t *read_off, int max_ctx) {
    API_TIMED(layers_impl(L, n_layers, kc, vc, kv_f16, x, T, D, eps, pos, write_slots, tok_seq, read_slots, read_off,
                          max_ctx));
}

/* A whole CPU-only step in one call: the embedding rows of the T tokens (times embed_scale), the
 * layer stack, then the final norm and the output head for the n_sel rows sel of the batch:
 * logits (n_sel, n_vocab). */
static int step_impl(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, int T, int D,
                     float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
                     const int64_t *read_slots, const int64_t *read_off, int max_ctx, int qt_emb, const void *emb,
                     int64_t rb_emb, const int64_t *tokens, float embed_scale, const float *out_norm, int qt_out,
                     const void *w_out, int64_t rb_out, int n_vocab, const int64_t *sel, int n_sel, float *logits) {
    float *x = amalloc(sizeof(float) * (size_t)T * D);
    float *h = amalloc(sizeof(float) * (size_t)(n_sel > 0 ? n_sel : 1) * D);
    int rc = 0;
    if (!x || !h) { rc = -2; goto done; }
    for (int i = 0; i < n_sel; i++)
        if (sel[i] < 0 || sel[i] >= T) { rc = -1; goto done; }
    if ((rc = get_rows_impl(qt_emb, emb, rb_emb, D, tokens, T, x))) goto done;
    if (embed_scale != 1.0f)
        for (size_t i = 0; i < (size_t)T * D; i++) x[i] *= embed_scale;
    if ((rc = layers_impl(L, n_layers, kc, vc, kv_f16, x, T, D, eps, pos, write_slots, tok_seq, read_slots, read_off,
                          max_ctx)))
        goto done;
    for (int i = 0; i < n_sel; i++) memcpy(h + (size_t)i * D, x + (size_t)sel[i] * D, sizeof(float) * D);
    er_rms_norm(h, out_norm, h, n_sel, D, eps); /* in place: each row's sum is taken before it is written */
    rc = matmul_impl(qt_out, w_out, rb_out, n_vocab, D, h, n_sel, logits);
done:
    free(x); free(h);
    return rc;
}

ER_API int er_step(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, int T, int D,
                   float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
                   const int64_t *read_slots, const int64_t *read_off, int max_ctx, int qt_emb, const void *emb,
                   int64_t rb_emb, const int64_t *tokens, float embed_scale, const float *out_norm, int qt_out,
                   const void *w_out, int64_t rb_out, int n_vocab, const int64_t *sel, int n_sel, float *logits) {
    API_TIMED(step_impl(L, n_layers, kc, vc, kv_f16, T, D, eps, pos, write_slots, tok_seq, read_slots, read_off,
                        max_ctx, qt_emb, emb, rb_emb, tokens, embed_scale, out_norm, qt_out, w_out, rb_out, n_vocab,
                        sel, n_sel, logits));
}
