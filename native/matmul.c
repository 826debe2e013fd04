/*
 * edgerun native kernels: quantized and float matmul y[B,N] = x[B,K] @ W^T, and row gather.
 * Portable policy code: which kernel family serves a call is decided here, the kernels come from
 * the running ISA's table (common.h, er_kern()). Activations are quantized to int8 on the fly.
 *
 *  - B <= ER_FUSED_MAX_B (decode, small batches): the fused kernels decode weight blocks in
 *    registers (fused_rows). In turn, where the type and ISA have them: the repacked 16-row tiles
 *    of a registered copy (repack.c), the several-weight-rows-per-pass kernels for 1-2 rows, the
 *    gather16 kernels for whole 16-row tiles, then the row kernels for what is left.
 *  - B > ER_FUSED_MAX_B (prefill): the GEMM where the ISA has one (AVX-512 VNNI).
 *  - otherwise: each weight row is decoded once into int8 + lane scales (+ mins) and dotted with
 *    every activation row (dot_decoded).
 *  - F32 / F16 / BF16 weights: float dot products, 4 activation rows at a time.
 */
#include "common.h"

#define BTILE 32

int par_worth(int64_t N, int K, int B) { return nthreads() > 1 && N * K * (B < 4 ? B : 4) >= (1 << 19); }

int use_fused(const er_type_traits_t *t, int B) { return B <= ER_FUSED_MAX_B && er_tune.fused && t->fused != NULL; }

/* the K-quant activation format when the fused kernels take this batch, else the per-32 one */
static int wants_kact(const er_type_traits_t *t, int B) { return t->vec_dot_type == ER_ACT_Q8_K && use_fused(t, B); }

void fused_rows(const er_type_traits_t *t, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B,
                float *y, int n0, int n1) {
    /* the repacked copy (repack.c) when this matrix has one */
    if (t->repack && B >= er_tune.repack_min_b + t->repack_extra_b && n0 % 16 == 0) {
        const uint8_t *T = repack_find(W, t->id, N, K, row_bytes);
        if (T) {
            const size_t tb = (size_t)(K / t->repack_unit_k) * t->repack_unit_bytes; /* one tile's bytes */
            for (; n0 + 16 <= n1; n0 += 16) t->repack(T + (size_t)(n0 / 16) * tb, K, A, B, y, N, n0);
            if (n0 >= n1) return;
        }
    }
    /* legacy types, 1 or 2 activation rows: several weight rows per pass for short rows only; a long
     * row alone runs faster on the row kernel, which keeps two accumulator sets (Q4_0 896x4864:
     * 97 vs 110 us) */
    if (t->pass12 && B <= 2 && er_tune.pass_rows && K < 4096 && (B == 1 || er_tune.pass_b2)) {
        const int nwx = er_tune.pass_rows > 1 ? er_tune.pass_rows : 2;
        for (int n = n0; n < n1; n += nwx)
            t->pass12(W + (size_t)n * row_bytes, row_bytes, n1 - n < nwx ? n1 - n : nwx, K, A, B, N, y + n);
        return;
    }
    if (t->pass1 && B == 1) {
        /* rows per pass: 2 for short rows; 1 for long ones, whose row-interleaved reads cost
         * more bandwidth than the shared activation loads save (1.5B ffn_down: 24.7 vs 17.6 GB/s) */
        const int nwx = K >= 4096 ? 1 : 2;
        for (int n = n0; n < n1; n += nwx)
            t->pass1(W + (size_t)n * row_bytes, row_bytes, n1 - n < nwx ? n1 - n : nwx, K, A, y + n);
        return;
    }
    if (t->gather16 && B >= 2 && er_tune.gather16) {
        for (; n0 + 16 <= n1; n0 += 16)
            for (int b0 = 0; b0 < B; b0 += 8) { /* up to 8 activation rows per pass over the tile */
                act_t Ab = *A;
                Ab.q += (size_t)b0 * K;
                Ab.l += (size_t)b0 * K / 4;
                t->gather16(W, row_bytes, N, K, &Ab, A->sq + (size_t)b0 * (K / 32), B - b0 < 8 ? B - b0 : 8,
                            y + (size_t)b0 * N, n0);
            }
    }
    const int per = t->fused_nr;
    for (int n = n0; n < n1; n++) {
        float res[ER_V512_NR];
        for (int b = 0; b < B; b += per) {
            const int nr = B - b < per ? B - b : per;
            t->fused(W + (size_t)n * row_bytes, K, A, b, nr, res);
            for (int r = 0; r < nr; r++) y[(size_t)(b + r) * N + n] = res[r];
        }
    }
}

typedef struct {
    const er_type_traits_t *t;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const act_t *A;
    int B;
    float *y;
} fused_ctx_t;

static void fused_task(void *p, int n0, int n1) {
    const fused_ctx_t *c = p;
    fused_rows(c->t, c->W, c->row_bytes, c->N, c->K, c->A, c->B, c->y, n0, n1);
}

/* decoded-row path: each weight row decoded once per activation tile [b0, b1) */
typedef struct {
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const act_t *A;
    int B;
    float *y;
    decode_fn dec;
    dot_decoded_fn dot;
    int b0, b1, err;
} rows_ctx_t;

/* per-thread buffers of one decoded row: int8 values, K/4 lane scales, K/16 mins */
static int row_bufs(int K, int8_t **wq, float **wl, float **mw) {
    uint8_t *buf = scratch(9, 2 * (size_t)K + (size_t)K / 4 + 64);
    if (!buf) return ER_E_NOMEM;
    *wq = (int8_t *)buf;
    *wl = (float *)(buf + K);
    *mw = (float *)(buf + 2 * (size_t)K);
    return 0;
}

static void rows_task(void *p, int n0, int n1) {
    rows_ctx_t *c = p;
    int8_t *wq;
    float *wl, *mw;
    if (row_bufs(c->K, &wq, &wl, &mw)) { c->err = ER_E_NOMEM; return; }
    for (int n = n0; n < n1; n++) {
        const int has_m = c->dec(c->W + (size_t)n * c->row_bytes, c->K, wq, wl, mw);
        float res[4];
        for (int b = c->b0; b < c->b1; b += 4) {
            const int nr = c->b1 - b < 4 ? c->b1 - b : 4;
            c->dot(wq, wl, has_m ? mw : NULL, c->K, c->A, b, nr, res);
            for (int r = 0; r < nr; r++) c->y[(size_t)(b + r) * c->N + n] = res[r];
        }
    }
}

int matmul_q_act(int qt, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B, float *y) {
    const er_kernels_t *k = er_kern();
    const er_type_traits_t *t = er_traits(k, qt);
    if (!t || t->is_float) return ER_E_UNSUPPORTED;
    const int nt = nthreads();
    const int par = par_worth(N, K, B);
    if (use_fused(t, B)) {
        act_t A2;
        if (!(A = act_offset_variant(t->off_shift, A, B, K, &A2, 8))) return ER_E_NOMEM;
        if (!par) {
            fused_rows(t, W, row_bytes, N, K, A, B, y, 0, N);
            return 0;
        }
        fused_ctx_t c = {t, W, row_bytes, N, K, A, B, y};
        pool_run(fused_task, &c, N, nt, 16);
        return 0;
    }
    if (k->gemm && B > ER_FUSED_MAX_B && er_tune.fused) return k->gemm(t, W, row_bytes, N, K, A, B, y);
    rows_ctx_t c = {W, row_bytes, N, K, A, B, y, t->decode, k->dot_decoded, 0, 0, 0};
    for (int b0 = 0; b0 < B; b0 += BTILE) {
        c.b0 = b0;
        c.b1 = b0 + BTILE < B ? b0 + BTILE : B;
        pool_run(rows_task, &c, N, par ? nt : 1, 8);
    }
    return c.err;
}

/* ---- several matrices over the same small batch: one activation quantization, one pool job */

#define ER_MULTI_MAX 4
typedef struct {
    int nm, K, B;
    int start[ER_MULTI_MAX + 1]; /* matrix m owns job rows [start[m], start[m+1]) */
    const er_type_traits_t *t[ER_MULTI_MAX];
    const uint8_t *W[ER_MULTI_MAX];
    int64_t rb[ER_MULTI_MAX];
    int N[ER_MULTI_MAX];
    float *y[ER_MULTI_MAX];
    const act_t *A[ER_MULTI_MAX];
} multi_ctx_t;

static void multi_task(void *p, int n0, int n1) {
    const multi_ctx_t *c = p;
    for (int m = 0; m < c->nm; m++) {
        const int lo = n0 > c->start[m] ? n0 : c->start[m], hi = n1 < c->start[m + 1] ? n1 : c->start[m + 1];
        if (lo < hi)
            fused_rows(c->t[m], c->W[m], c->rb[m], c->N[m], c->K, c->A[m], c->B, c->y[m], lo - c->start[m],
                       hi - c->start[m]);
    }
}

/* y[m] = x @ W[m]^T for nm <= 4 matrices with the same K (e.g. Q, K and V). Batches the fused
 * kernels take run as one job; otherwise one matmul each. */
int matmul_multi(int nm, const int *qt, const void *const *W, const int64_t *rb, const int *N, int K, const float *x,
                 int B, float *const *y) {
    const er_kernels_t *k = er_kern();
    int ok = nm >= 1 && nm <= ER_MULTI_MAX, need32 = 0, needk = 0;
    for (int m = 0; ok && m < nm; m++) {
        const er_type_traits_t *t = er_traits(k, qt[m]);
        ok = t && !t->is_float && K % t->block == 0 && use_fused(t, B);
        if (ok && t->vec_dot_type == ER_ACT_Q8_K) needk = 1; else need32 = 1;
    }
    if (!ok) {
        for (int m = 0; m < nm; m++) {
            const int rc = matmul_impl(qt[m], W[m], rb[m], N[m], K, x, B, y[m]);
            if (rc) return rc;
        }
        return 0;
    }
    act_t A, Aoff[2];
    int off_qt[2] = {-1, -1};
    const act_t *Aoffp[2] = {NULL, NULL};
    if (act_alloc(&A, B, K, need32, needk)) return ER_E_NOMEM;
    act_quantize(&A, x, B, K);
    multi_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.nm = nm;
    c.K = K;
    c.B = B;
    for (int m = 0; m < nm; m++) {
        const er_type_traits_t *t = er_traits(k, qt[m]);
        c.t[m] = t;
        c.W[m] = W[m];
        c.rb[m] = rb[m];
        c.N[m] = N[m];
        c.y[m] = y[m];
        c.A[m] = &A;
        if (t->off_shift) { /* one offset copy per type (slots 8, 10), made once and shared by its matrices */
            int v = 0;
            while (v < 2 && off_qt[v] >= 0 && off_qt[v] != qt[m]) v++;
            if (v == 2) return ER_E_UNSUPPORTED; /* a third offset type: no scratch slot for it */
            if (off_qt[v] < 0) {
                off_qt[v] = qt[m];
                Aoffp[v] = act_offset_variant(t->off_shift, &A, B, K, &Aoff[v], 8 + 2 * v);
            }
            c.A[m] = Aoffp[v];
        }
        if (!c.A[m]) return ER_E_NOMEM;
        c.start[m + 1] = c.start[m] + N[m];
    }
    const int total = c.start[nm];
    if (!par_worth(total, K, B)) multi_task(&c, 0, total);
    else pool_run(multi_task, &c, total, nthreads(), 16);
    return 0;
}

/* ---------------------------------------------------- float matmul */

typedef struct {
    fdot_fn dot;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const float *x;
    int B;
    float *y;
} fmat_ctx_t;

static void fmat_task(void *p, int n0, int n1) {
    const fmat_ctx_t *c = p;
    for (int n = n0; n < n1; n++) {
        float res[4];
        for (int b = 0; b < c->B; b += 4) {
            const int nr = c->B - b < 4 ? c->B - b : 4;
            c->dot(c->W + (size_t)n * c->row_bytes, c->K, c->x + (size_t)b * c->K, nr, res);
            for (int r = 0; r < nr; r++) c->y[(size_t)(b + r) * c->N + n] = res[r];
        }
    }
}

static int matmul_f(const er_type_traits_t *t, const uint8_t *W, int64_t row_bytes, int N, int K, const float *x,
                    int B, float *y) {
    const int nt = nthreads();
    const int par = nt > 1 && (int64_t)N * K * (B < 4 ? B : 4) >= (1 << 19);
    const int bt = 16;
    for (int b0 = 0; b0 < B; b0 += bt) {
        const int nb = B - b0 < bt ? B - b0 : bt;
        fmat_ctx_t c = {t->fdot, W, row_bytes, N, K, x + (size_t)b0 * K, nb, y + (size_t)b0 * N};
        pool_run(fmat_task, &c, N, par ? nt : 1, 16);
    }
    return 0;
}

/* y[B,N] = x[B,K] @ W^T ; W rows are row_bytes apart. Returns 0 or an er_status. */
int matmul_impl(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y) {
    const er_type_traits_t *t = er_traits(er_kern(), qt);
    if (!t) return ER_E_UNSUPPORTED;
    if (K % t->block) return ER_E_SHAPE;
    if (N < 0 || K < 0 || B < 0 || (!W && N && K) || (!x && B && K) || (!y && B && N)) return ER_E_INVALID;
    if (t->is_float) return matmul_f(t, (const uint8_t *)W, row_bytes, N, K, x, B, y);
    act_t A;
    const int kq = wants_kact(t, B);
    if (act_alloc(&A, B, K, !kq, kq)) return ER_E_NOMEM;
    A.g256 = t->vec_dot_type == ER_ACT_Q8_K; /* same rounding as the fused K-quant kernels: batch-size invariant */
    act_quantize(&A, x, B, K);
    return matmul_q_act(qt, (const uint8_t *)W, row_bytes, N, K, &A, B, y);
}

/* ---------------------------------------------------- row gather */

typedef struct {
    int qt;
    const uint8_t *W;
    int64_t row_bytes;
    int K;
    const int64_t *ids;
    float *out;
    decode_fn dec; /* NULL: a float type */
    int err;
} getrows_ctx_t;

static void getrows_task(void *p, int t0, int t1) {
    getrows_ctx_t *c = p;
    const int K = c->K;
    int8_t *wq = NULL;
    float *wl = NULL, *mw = NULL;
    if (c->dec && row_bufs(K, &wq, &wl, &mw)) { c->err = ER_E_NOMEM; return; }
    for (int t = t0; t < t1; t++) {
        const uint8_t *row = c->W + (size_t)c->ids[t] * c->row_bytes;
        float *o = c->out + (size_t)t * K;
        if (!c->dec) {
            for (int k = 0; k < K; k++) o[k] = fw_scalar(c->qt, row, k);
        } else {
            const int has_m = c->dec(row, K, wq, wl, mw);
            for (int k = 0; k < K; k++) o[k] = (float)wq[k] * wl[k >> 2] + (has_m ? mw[k >> 4] : 0.f);
        }
    }
}

/* out[T,K] = dequantized rows ids of W */
int get_rows_impl(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out) {
    const er_type_traits_t *t = er_traits(er_kern(), qt);
    if (!t) return ER_E_UNSUPPORTED;
    if (K % t->block) return ER_E_SHAPE;
    if (K < 0 || T < 0 || (T > 0 && (!W || !ids || !out))) return ER_E_INVALID;
    const int nt = nthreads();
    getrows_ctx_t c = {qt, (const uint8_t *)W, row_bytes, K, ids, out, t->is_float ? NULL : t->decode, 0};
    pool_run(getrows_task, &c, T, nt > 1 && (int64_t)T * K >= (1 << 18) ? nt : 1, 4);
    return c.err;
}
