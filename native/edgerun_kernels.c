/*
 * edgerun native kernels: the exported compute entry points -- the matmul, row gather, FFN block,
 * the whole layer stack of a CPU-only step and the whole step -- each timed into er_api_seconds,
 * plus the ABI version and the status names. The prototypes and their contracts are in
 * include/edgerun.h; what each file under native/ holds is listed in docs/INTERFACES.md.
 *
 * Layout (ggml-style): portable C in pool.c (threads, scratch), dispatch.c (ISA detection, kernel
 * tables, settings), act.c (activation quantization), quants.c (generic kernels, the oracle),
 * matmul.c (which kernel family serves a matmul), ops.c (light ops), ffn.c, attention.c and
 * repack.c (repacked copies); ISA kernels in arch/x86/ (avx2.c, avx512.c, gemm.c, gather16.c,
 * repack.c), each file opening with its target pragma and filling its rows of the kernel table.
 */
#include "common.h"

ER_API int er_abi_version(void) { return ER_ABI_VERSION; }

ER_API const char *er_status_str(int status) {
    switch (status) {
    case ER_OK: return "ok";
    case ER_E_UNSUPPORTED: return "unsupported quant type or operation";
    case ER_E_NOMEM: return "out of memory";
    case ER_E_SHAPE: return "size not a multiple of the block size, or shapes disagree";
    case ER_E_INVALID: return "invalid argument";
    default: return "unknown native error";
    }
}

/* Wall time spent inside the outermost public entry points (matmul, get_rows, ffn, layers,
 * step), so the Python side can measure its own and the binding's overhead. */
static _Thread_local int t_api_depth = 0;
static double g_api_seconds = 0.0;
#define API_TIMED(call)                                          \
    do {                                                         \
        const double _t0 = t_api_depth++ == 0 ? now_s() : 0.0;   \
        const int _rc = (call);                                  \
        if (--t_api_depth == 0) g_api_seconds += now_s() - _t0;  \
        return _rc;                                              \
    } while (0)
ER_API double er_api_seconds(void) { return g_api_seconds; }

ER_API int er_matmul(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y) {
    API_TIMED(matmul_impl(qt, W, row_bytes, N, K, x, B, y));
}
ER_API int er_get_rows(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out) {
    API_TIMED(get_rows_impl(qt, W, row_bytes, K, ids, T, out));
}
ER_API int er_ffn(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
                  const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
                  float *out) {
    API_TIMED(ffn_impl(x, norm_w, eps, qt_g, Wg, rb_g, qt_u, Wu, rb_u, qt_d, Wd, rb_d, D, F, B, act, NULL, out));
}

/* ---- the whole layer stack of a CPU-only step in one call ----
 * Per layer: the attention block (attention.c), then the FFN (ffn.c, with Gemma's post-norm), x
 * updated in place. The constants of each layer come in an er_layer_t (include/edgerun.h) that the
 * Python side builds once per model. */

ER_API int64_t er_layer_size(void) { return (int64_t)sizeof(er_layer_t); }

static int layers_impl(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, float *x,
                       int T, int D, float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
                       const int64_t *read_slots, const int64_t *read_off, int max_ctx) {
    if (n_layers < 0 || (n_layers > 0 && !L) || T < 0 || D <= 0) return ER_E_INVALID;
    float *h = amalloc(sizeof(float) * (size_t)T * D);
    if (!h) return ER_E_NOMEM;
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
    if (n_sel < 0 || (n_sel > 0 && !sel) || T < 0 || D <= 0) return ER_E_INVALID;
    float *x = amalloc(sizeof(float) * (size_t)T * D);
    float *h = amalloc(sizeof(float) * (size_t)(n_sel > 0 ? n_sel : 1) * D);
    int rc = 0;
    if (!x || !h) { rc = ER_E_NOMEM; goto done; }
    for (int i = 0; i < n_sel; i++)
        if (sel[i] < 0 || sel[i] >= T) { rc = ER_E_INVALID; goto done; }
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
