/* Fused attention block for the CPU-only mode: one call per layer per step.
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

typedef struct {
    const float *q, *kc, *vc;
    const int64_t *rslots, *roff;
    const int32_t *tok_seq, *pos;
    int H, KVH, hd, window, max_ctx;
    float *out;
} attn_ctx_t;

static inline float er_dotf(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0.f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

static void attn_task(void *p, int i0, int i1) {
    const attn_ctx_t *c = p;
    const int H = c->H, hd = c->hd, group = c->H / c->KVH, KVH = c->KVH;
    float *sc = malloc(sizeof(float) * (size_t)(c->max_ctx > 0 ? c->max_ctx : 1));
    if (!sc) return;
    for (int i = i0; i < i1; i++) {
        const int t = i / H, h = i % H, g = h / group;
        const int s = c->tok_seq[t], pos = c->pos[t];
        const int lo = c->window > 0 && pos - c->window + 1 > 0 ? pos - c->window + 1 : 0;
        const int64_t *sl = c->rslots + c->roff[s];
        const float *qv = c->q + ((size_t)t * H + h) * hd;
        float m = -INFINITY;
        for (int j = lo; j <= pos; j++) {
            const float v = er_dotf(qv, c->kc + ((size_t)sl[j] * KVH + g) * hd, hd);
            sc[j - lo] = v;
            if (v > m) m = v;
        }
        float sum = 0.f;
        for (int j = 0; j <= pos - lo; j++) {
            sc[j] = expf(sc[j] - m);
            sum += sc[j];
        }
        const float inv = 1.f / sum;
        float *o = c->out + ((size_t)t * H + h) * hd;
        for (int d = 0; d < hd; d++) o[d] = 0.f;
        for (int j = lo; j <= pos; j++) {
            const float w = sc[j - lo] * inv;
            const float *vv = c->vc + ((size_t)sl[j] * KVH + g) * hd;
            for (int d = 0; d < hd; d++) o[d] += w * vv[d];
        }
    }
    free(sc);
}

/* RoPE on (T, nh, hd) at float positions; neox pairs (i, i+hd/2), else (2i, 2i+1). */
static void rope_f(float *x, const float *fpos, int T, int nh, int hd, float base, int neox) {
    const int half = hd / 2;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            const double th = (double)fpos[t] * pow((double)base, -2.0 * i / hd);
            const float cs = (float)cos(th), sn = (float)sin(th);
            for (int h = 0; h < nh; h++) {
                float *v = x + ((size_t)t * nh + h) * hd;
                const int a0 = neox ? i : 2 * i, a1 = neox ? i + half : 2 * i + 1;
                const float a = v[a0], b = v[a1];
                v[a0] = a * cs - b * sn;
                v[a1] = a * sn + b * cs;
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
                         float attn_scale, int window, const int32_t *pos, float *kcache, float *vcache,
                         const int64_t *write_slots, const int32_t *tok_seq, const int64_t *read_slots,
                         const int64_t *read_off, int max_ctx, float *out) {
    if (g_isa < 0) detect_isa();
    if (H <= 0 || KVH <= 0 || H % KVH || hd <= 0 || hd % 2) return -1;
    const int QD = H * hd, KD = KVH * hd;
    int rc = 0;
    float *nx = amalloc(sizeof(float) * (size_t)T * D);
    float *q = amalloc(sizeof(float) * (size_t)T * QD);
    float *k = amalloc(sizeof(float) * (size_t)T * KD);
    float *v = amalloc(sizeof(float) * (size_t)T * KD);
    float *a = amalloc(sizeof(float) * (size_t)T * QD);
    float *o = amalloc(sizeof(float) * (size_t)T * D);
    float *fpos = amalloc(sizeof(float) * (size_t)T);
    if (!nx || !q || !k || !v || !a || !o || !fpos) { rc = -2; goto done; }
    er_rms_norm(x, norm_w, nx, T, D, eps);
    if ((rc = er_matmul(qt_q, Wq, rb_q, QD, D, nx, T, q))) goto done;
    if ((rc = er_matmul(qt_k, Wk, rb_k, KD, D, nx, T, k))) goto done;
    if ((rc = er_matmul(qt_v, Wv, rb_v, KD, D, nx, T, v))) goto done;
    for (int t = 0; t < T; t++) {
        if (bq) for (int i = 0; i < QD; i++) q[(size_t)t * QD + i] += bq[i];
        if (bk) for (int i = 0; i < KD; i++) k[(size_t)t * KD + i] += bk[i];
        if (bv) for (int i = 0; i < KD; i++) v[(size_t)t * KD + i] += bv[i];
        fpos[t] = (float)pos[t] * pos_scale;
    }
    if (q_norm) er_rms_norm(q, q_norm, q, T * H, hd, eps);
    if (k_norm) er_rms_norm(k, k_norm, k, T * KVH, hd, eps);
    rope_f(q, fpos, T, H, hd, rope_base, neox);
    rope_f(k, fpos, T, KVH, hd, rope_base, neox);
    for (size_t i = 0; i < (size_t)T * QD; i++) q[i] *= attn_scale;
    for (int t = 0; t < T; t++) {
        memcpy(kcache + (size_t)write_slots[t] * KD, k + (size_t)t * KD, sizeof(float) * KD);
        memcpy(vcache + (size_t)write_slots[t] * KD, v + (size_t)t * KD, sizeof(float) * KD);
    }
    {
        attn_ctx_t c = {q, kcache, vcache, read_slots, read_off, tok_seq, pos, H, KVH, hd, window, max_ctx, a};
        const int64_t work = (int64_t)T * H * (max_ctx > 0 ? max_ctx : 1) * hd;
        pool_run(attn_task, &c, T * H, nthreads() > 1 && work >= (1 << 15) ? nthreads() : 1, 1);
    }
    if ((rc = er_matmul(qt_o, Wo, rb_o, D, QD, a, T, o))) goto done;
    if (post_norm) er_rms_norm(o, post_norm, o, T, D, eps);
    for (size_t i = 0; i < (size_t)T * D; i++) out[i] = x[i] + o[i];
done:
    free(nx); free(q); free(k); free(v); free(a); free(o); free(fpos);
    return rc;
}

ER_API int er_attn_block(const float *x, int T, int D, const float *norm_w, float eps,
                         int qt_q, const void *Wq, int64_t rb_q, const float *bq,
                         int qt_k, const void *Wk, int64_t rb_k, const float *bk,
                         int qt_v, const void *Wv, int64_t rb_v, const float *bv,
                         int qt_o, const void *Wo, int64_t rb_o,
                         const float *q_norm, const float *k_norm, const float *post_norm,
                         int H, int KVH, int hd, int neox, float rope_base, float pos_scale,
                         float attn_scale, int window, const int32_t *pos, float *kcache, float *vcache,
                         const int64_t *write_slots, const int32_t *tok_seq, const int64_t *read_slots,
                         const int64_t *read_off, int max_ctx, float *out) {
    API_TIMED(attn_block_impl(x, T, D, norm_w, eps, qt_q, Wq, rb_q, bq, qt_k, Wk, rb_k, bk, qt_v, Wv, rb_v, bv,
                              qt_o, Wo, rb_o, q_norm, k_norm, post_norm, H, KVH, hd, neox, rope_base, pos_scale,
                              attn_scale, window, pos, kcache, vcache, write_slots, tok_seq, read_slots, read_off,
                              max_ctx, out));
}
