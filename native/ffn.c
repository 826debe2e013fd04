/*
 * edgerun native kernels: the fused FFN block,
 *   out = x + post(down(act(gate(n)) * up(n))), n = rms_norm(x) * norm_w,
 * with gate and up run as one pool job over shared quantized activations when the fused kernels
 * take the batch (act(gate) * up applied to each job's rows while they are in cache).
 */
#include "common.h"

/* gate and up rows [n0, n1) of a small batch, then act(gate) * up over them: one pool job */
typedef struct {
    const er_type_traits_t *tg, *tu;
    const uint8_t *Wg, *Wu;
    int64_t rbg, rbu;
    int F, K, B, act;
    const act_t *Ag, *Au;
    float *g, *u;
} gu_ctx_t;

static void gu_task(void *p, int n0, int n1) {
    const gu_ctx_t *c = p;
    fused_rows(c->tg, c->Wg, c->rbg, c->F, c->K, c->Ag, c->B, c->g, n0, n1);
    fused_rows(c->tu, c->Wu, c->rbu, c->F, c->K, c->Au, c->B, c->u, n0, n1);
    for (int b = 0; b < c->B; b++) {
        float *g = c->g + (size_t)b * c->F;
        act_gate_range(g, c->u + (size_t)b * c->F, g, n0, n1, c->act);
    }
}

/* out = x + post(down(act(gate(n)) * up(n))), n = rms_norm(x) * norm_w, post = rms_norm * post_norm when
 * given (Gemma).  x, out: (B, D); gate/up: (F, D); down: (D, F) */
int ffn_impl(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
             const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
             const float *post_norm, float *out) {
    const er_kernels_t *k = er_kern();
    const er_type_traits_t *tg = er_traits(k, qt_g), *tu = er_traits(k, qt_u);
    if (!tg || !tu || !er_traits(k, qt_d)) return ER_E_UNSUPPORTED;
    if (D % tg->block || D % tu->block || F % er_traits(k, qt_d)->block) return ER_E_SHAPE;
    int rc = 0;
    float *nx = scratch(13, sizeof(float) * (size_t)B * D);
    float *g = scratch(14, sizeof(float) * (size_t)B * F);
    float *u = scratch(15, sizeof(float) * (size_t)B * F);
    float *dn = scratch(16, sizeof(float) * (size_t)B * D);
    if (!nx || !g || !u || !dn) { rc = ER_E_NOMEM; goto done; }
    er_rms_norm(x, norm_w, nx, B, D, eps);
    const int quant = !tg->is_float && !tu->is_float;
    if (quant && use_fused(tg, B) && use_fused(tu, B)) {
        act_t A, A4, A5;
        const int kg = tg->vec_dot_type == ER_ACT_Q8_K, ku = tu->vec_dot_type == ER_ACT_Q8_K;
        if (act_alloc(&A, B, D, !kg || !ku, kg || ku)) { rc = ER_E_NOMEM; goto done; }
        act_quantize(&A, nx, B, D);
        gu_ctx_t c = {tg, tu, Wg, Wu, rb_g, rb_u, F, D, B, act, act_offset_variant(tg->off_shift, &A, B, D, &A4, 8),
                      NULL, g, u};
        c.Au = qt_u == qt_g ? c.Ag : act_offset_variant(tu->off_shift, &A, B, D, &A5, 10); /* gate and up share a type */
        if (!c.Ag || !c.Au) { rc = ER_E_NOMEM; goto done; }
        if (par_worth(2 * (int64_t)F, D, B)) pool_run(gu_task, &c, F, nthreads(), 16);
        else gu_task(&c, 0, F);
    } else {
        if (quant) {
            act_t A;
            const int kg = tg->vec_dot_type == ER_ACT_Q8_K && use_fused(tg, B);
            const int ku = tu->vec_dot_type == ER_ACT_Q8_K && use_fused(tu, B);
            if (act_alloc(&A, B, D, !kg || !ku, kg || ku)) { rc = ER_E_NOMEM; goto done; }
            A.g256 = tg->vec_dot_type == ER_ACT_Q8_K && tu->vec_dot_type == ER_ACT_Q8_K;
            act_quantize(&A, nx, B, D);
            rc = matmul_q_act(qt_g, Wg, rb_g, F, D, &A, B, g);
            if (!rc) rc = matmul_q_act(qt_u, Wu, rb_u, F, D, &A, B, u);
        } else {
            rc = matmul_impl(qt_g, Wg, rb_g, F, D, nx, B, g);
            if (!rc) rc = matmul_impl(qt_u, Wu, rb_u, F, D, nx, B, u);
        }
        if (rc) goto done;
        er_act_gate(g, u, g, (int64_t)B * F, act);
    }
    rc = matmul_impl(qt_d, Wd, rb_d, D, F, g, B, dn);
    if (rc) goto done;
    if (post_norm) er_rms_norm(dn, post_norm, dn, B, D, eps);
    for (int64_t i = 0; i < (int64_t)B * D; i++) out[i] = x[i] + dn[i];
done:
    return rc;
}
