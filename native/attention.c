/*
 * edgerun native kernels: the fused attention block for the CPU-only mode, run per layer by
 * er_layers / er_step (edgerun_kernels.c). For T new tokens of a batch of sequences:
 *   n = rms_norm(x) * norm_w
 *   q, k, v = n @ Wq^T (+bq), n @ Wk^T (+bk), n @ Wv^T (+bv)    (T, H*hd), (T, KVH*hd)
 *   optional per-head QK-norm; RoPE at position * pos_scale; q *= attn_scale
 *   k, v written to the paged cache at write_slots[t]
 *   a = causal (optionally sliding-window) GQA softmax attention over each sequence's slots
 *   o = a @ Wo^T, optional post-norm; out = x + o
 * Sequence s's cache positions 0..ctx_len[s]-1 live at read_slots[read_off[s] + j].
 * The per-(token, KV head) attention kernel comes from the ISA table (k->attn, arch/x86) for the
 * head sizes it has; attn_one below is the generic one.
 */
#include "attention.h"

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


/* jobs i = (t * KVH + g) * nsplit + part: part of the query heads of KV head g (nsplit > 1 only
 * when there are fewer (token, KV head) pairs than threads) */
static void attn_task(void *p, int i0, int i1) {
    const attn_ctx_t *c = p;
    const int G = c->H / c->KVH, ns = c->nsplit, per = (G + ns - 1) / ns;
    float *sc = scratch(11, sizeof(float) * (size_t)per * (size_t)(c->max_ctx > 0 ? c->max_ctx : 1));
    const attn_fn fast = er_kern()->attn;
    if (!sc) return;
    for (int i = i0; i < i1; i++) {
        const int tg = i / ns, h0 = (i % ns) * per, h1 = h0 + per < G ? h0 + per : G;
        if (h0 >= h1) continue;
        if (fast && fast(c, tg / c->KVH, tg % c->KVH, h0, h1, sc)) continue;
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

int attn_block_impl(const float *x, int T, int D, const float *norm_w, float eps,
                    int qt_q, const void *Wq, int64_t rb_q, const float *bq,
                    int qt_k, const void *Wk, int64_t rb_k, const float *bk,
                    int qt_v, const void *Wv, int64_t rb_v, const float *bv,
                    int qt_o, const void *Wo, int64_t rb_o,
                    const float *q_norm, const float *k_norm, const float *post_norm,
                    int H, int KVH, int hd, int neox, float rope_base, float pos_scale,
                    float attn_scale, int window, const int32_t *pos, void *kcache, void *vcache, int kv_f16,
                    const int64_t *write_slots, const int32_t *tok_seq, const int64_t *read_slots,
                    const int64_t *read_off, int max_ctx, float *out) {
    if (H <= 0 || KVH <= 0 || H % KVH || hd <= 0 || hd % 2 || hd > ER_MAX_HD || T < 0 || D <= 0) return ER_E_INVALID;
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
    if (!nx || !q || !k || !v || !a || !o || !cs || !sn) { rc = ER_E_NOMEM; goto done; }
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
    if ((rc = matmul_impl(qt_o, Wo, rb_o, D, QD, a, T, o))) goto done;
    if (post_norm) er_rms_norm(o, post_norm, o, T, D, eps);
    for (size_t i = 0; i < (size_t)T * D; i++) out[i] = x[i] + o[i];
done:
    return rc;
}


