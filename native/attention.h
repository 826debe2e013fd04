/*
 * edgerun native kernels, internal: what the attention block (attention.c) shares with its ISA
 * kernels (arch/x86/avx2.c, avx512.c): the job description and the span of cache slots a token
 * attends to.
 */
#ifndef EDGERUN_ATTENTION_H
#define EDGERUN_ATTENTION_H

#include "common.h"

#define ER_MAX_HD 1024 /* the largest head size taken */

typedef struct attn_ctx {
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

#endif
