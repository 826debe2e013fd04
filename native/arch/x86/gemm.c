/*
 * edgerun native kernels: the batched (prefill) GEMM for B > ER_FUSED_MAX_B on AVX-512 VNNI,
 * lanes = 16 activation rows. Activations are repacked per group of 16 rows as
 * [K/4][16 rows][4 bytes]; a broadcast of 4 decoded weight bytes times one 64-byte load gives
 * 16 rows x 4 MACs per dpbusd, and the float conversion happens once per G (16 or 32: the type's
 * gemm_group) values instead of once per 4. Weight rows are decoded by the type's table decoder
 * four at a time, once per tile of activation row groups.
 */
#if defined(__x86_64__) && !defined(ER_NO_X86)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")

#include "x86.h"

typedef struct {
    int K, G, ngroups;
    int8_t *P;    /* ngroups * K * 16 */
    int32_t *NS;  /* ngroups * (K/G) * 16 : -128 * sum of the G quants */
    float *DA;    /* ngroups * (K/G) * 16 : activation scale */
    float *XS;    /* ngroups * (K/16) * 16 : scale * sum of 16 quants */
} pack_t;

/* the activations' buffers are scratch slots 25-28: nothing to free */
static int pack_acts(pack_t *pk, const act_t *A, int B, int K, int G) {
    memset(pk, 0, sizeof(*pk));
    pk->K = K; pk->G = G; pk->ngroups = (B + 15) / 16;
    const size_t ng = (size_t)pk->ngroups;
    pk->P = scratch(25, ng * K * 16);
    pk->NS = scratch(26, ng * (K / G) * 16 * 4);
    pk->DA = scratch(27, ng * (K / G) * 16 * 4);
    pk->XS = scratch(28, ng * (K / 16) * 16 * 4);
    if (!pk->P || !pk->NS || !pk->DA || !pk->XS) return ER_E_NOMEM;
    memset(pk->P, 0, ng * K * 16);
    memset(pk->NS, 0, ng * (K / G) * 16 * 4);
    memset(pk->DA, 0, ng * (K / G) * 16 * 4);
    memset(pk->XS, 0, ng * (K / 16) * 16 * 4);
    for (int r = 0; r < B; r++) {
        const size_t g = (size_t)(r / 16), l = (size_t)(r % 16);
        const int8_t *q = A->q + (size_t)r * K;
        const int32_t *xn = A->n + (size_t)r * K / 4;
        int8_t *P = pk->P + g * K * 16;
        for (int j = 0; j < K / 4; j++) memcpy(P + ((size_t)j * 16 + l) * 4, q + 4 * j, 4);
        for (int blk = 0; blk < K / G; blk++) {
            int32_t t = 0;
            for (int j = 0; j < G / 4; j++) t += xn[blk * G / 4 + j];
            pk->NS[(g * (K / G) + blk) * 16 + l] = t;
            pk->DA[(g * (K / G) + blk) * 16 + l] = A->l[(size_t)r * K / 4 + blk * G / 4];
        }
        for (int g16 = 0; g16 < K / 16; g16++) pk->XS[(g * (K / 16) + g16) * 16 + l] = A->s[(size_t)r * K / 16 + g16];
    }
    return 0;
}

/* NW weight rows (decoded) x NG groups of 16 activation rows; out[w][16*NG] */
AI void gemm_dec_avx512_g(const int8_t *const *w, const float *const *wl, const float *const *mw, const int NW, int K,
                           const int G, const pack_t *pk, int g0, const int NG, float *out) {
    __m512 facc[4][2];
    __m512i iacc[4][2];
    const int nbk = K / G;
    const int8_t *P[2];
    const int32_t *NS[2];
    const float *DA[2];
    for (int gg = 0; gg < NG; gg++) {
        for (int v = 0; v < NW; v++) facc[v][gg] = _mm512_setzero_ps();
        P[gg] = pk->P + (size_t)(g0 + gg) * K * 16;
        NS[gg] = pk->NS + (size_t)(g0 + gg) * nbk * 16;
        DA[gg] = pk->DA + (size_t)(g0 + gg) * nbk * 16;
    }
    for (int blk = 0; blk < nbk; blk++) {
        for (int gg = 0; gg < NG; gg++) {
            const __m512i ns = _mm512_loadu_si512(NS[gg] + 16 * blk);
            for (int v = 0; v < NW; v++) iacc[v][gg] = ns;
        }
        for (int j = 0; j < G / 4; j++) {
            __m512i bw[4];
            for (int v = 0; v < NW; v++) {
                uint32_t w4;
                memcpy(&w4, w[v] + blk * G + 4 * j, 4);
                bw[v] = _mm512_set1_epi32((int)(w4 ^ 0x80808080u));
            }
            for (int gg = 0; gg < NG; gg++) {
                const __m512i a = _mm512_loadu_si512(P[gg] + ((size_t)blk * G / 4 + j) * 64);
                for (int v = 0; v < NW; v++) iacc[v][gg] = _mm512_dpbusd_epi32(iacc[v][gg], bw[v], a);
            }
        }
        for (int gg = 0; gg < NG; gg++) {
            const __m512 da = _mm512_loadu_ps(DA[gg] + 16 * blk);
            for (int v = 0; v < NW; v++)
                facc[v][gg] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[v][gg]),
                                              _mm512_mul_ps(_mm512_set1_ps(wl[v][blk * G / 4]), da), facc[v][gg]);
        }
    }
    /* additive terms: every decoder repeats each min over a pair of 16s (per-32 mins), so one FMA
     * per 32 values with the activation sums of the pair */
    int anym = 0;
    for (int v = 0; v < NW; v++) anym |= mw[v] != NULL;
    if (anym) {
        for (int g32 = 0; g32 < K / 32; g32++) {
            __m512 xs[2];
            for (int gg = 0; gg < NG; gg++) {
                const float *p = pk->XS + ((size_t)(g0 + gg) * (K / 16) + 2 * g32) * 16;
                xs[gg] = _mm512_add_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16));
            }
            for (int v = 0; v < NW; v++) {
                if (!mw[v]) continue;
                const __m512 m = _mm512_set1_ps(mw[v][2 * g32]);
                for (int gg = 0; gg < NG; gg++) facc[v][gg] = _mm512_fmadd_ps(m, xs[gg], facc[v][gg]);
            }
        }
    }
    for (int v = 0; v < NW; v++)
        for (int gg = 0; gg < NG; gg++) _mm512_storeu_ps(out + 32 * v + 16 * gg, facc[v][gg]);
}

static void gemm_dec_q8_0_avx512(const int8_t *const *w, const float *const *wl, const float *const *mw, int nw, int K,
                             int G, const pack_t *pk, int g0, int ng, float *out) {
#define GV(NW_, G_, NG_) gemm_dec_avx512_g(w, wl, mw, NW_, K, G_, pk, g0, NG_, out)
#define GVN(G_, NG_)                                \
    switch (nw) {                                   \
    case 4: GV(4, G_, NG_); break;                  \
    case 3: GV(3, G_, NG_); break;                  \
    case 2: GV(2, G_, NG_); break;                  \
    default: GV(1, G_, NG_); break;                 \
    }
    if (G == 32) {
        if (ng == 2) { GVN(32, 2) } else { GVN(32, 1) }
    } else {
        if (ng == 2) { GVN(16, 2) } else { GVN(16, 1) }
    }
#undef GVN
#undef GV
}

typedef struct {
    const uint8_t *W;
    int64_t row_bytes;
    int N, K, G, B, t0, t1;
    decode_fn dec;
    const pack_t *pk;
    float *y;
    int err;
} gemm_ctx_t;

/* weight-row quads [q0, q1) x activation row groups [t0, t1) */
static void gemm_task(void *p, int q0, int q1) {
    gemm_ctx_t *c = p;
    const int K = c->K, N = c->N, B = c->B;
    const size_t per = 2 * (size_t)K + (size_t)K / 4 + 64; /* int8 row, K/4 lane scales, K/16 mins */
    uint8_t *buf = scratch(9, 4 * per);
    if (!buf) { c->err = ER_E_NOMEM; return; }
    int8_t *wq[4];
    float *wl[4], *mwb[4];
    for (int v = 0; v < 4; v++) {
        wq[v] = (int8_t *)(buf + v * per);
        wl[v] = (float *)(buf + v * per + K);
        mwb[v] = (float *)(buf + v * per + 2 * (size_t)K);
    }
    for (int np = q0; np < q1; np++) {
        const int n = 4 * np, nw = N - n < 4 ? N - n : 4;
        const float *mw[4] = {NULL, NULL, NULL, NULL};
        for (int v = 0; v < nw; v++)
            mw[v] = c->dec(c->W + (size_t)(n + v) * c->row_bytes, K, wq[v], wl[v], mwb[v]) ? mwb[v] : NULL;
        float out[128];
        for (int g = c->t0; g < c->t1; g += 2) {
            const int ng = c->t1 - g >= 2 ? 2 : 1;
            gemm_dec_q8_0_avx512((const int8_t *const *)wq, (const float *const *)wl, mw, nw, K, c->G, c->pk, g, ng, out);
            for (int v = 0; v < nw; v++)
                for (int l = 0; l < 16 * ng; l++) {
                    const int r = 16 * g + l;
                    if (r < B) c->y[(size_t)r * N + n + v] = out[32 * v + l];
                }
        }
    }
}

/* y[B,N] for B > ER_FUSED_MAX_B: 0 or an er_status */
static int matmul_gemm_avx512(const er_type_traits_t *t, const uint8_t *W, int64_t row_bytes, int N, int K,
                            const act_t *A, int B, float *y) {
    const int G = t->gemm_group;
    pack_t pk;
    if (pack_acts(&pk, A, B, K, G)) return ER_E_NOMEM;
    const int nt = nthreads();
    const int par = nt > 1 && (int64_t)N * K * B >= (1 << 19);
    /* row groups per tile (K * 16 bytes of packed activations a group): each weight row is decoded
     * once per tile, so fewer, larger tiles decode and read the weights fewer times */
    int GT = (int)((size_t)er_tune.gemm_l2 / ((size_t)K * 16));
    GT = GT < 4 ? 4 : GT;
    gemm_ctx_t c = {W, row_bytes, N, K, G, B, 0, 0, t->decode, &pk, y, 0};
    for (int t0 = 0; t0 < pk.ngroups; t0 += GT) {
        c.t0 = t0;
        c.t1 = t0 + GT < pk.ngroups ? t0 + GT : pk.ngroups;
        pool_run(gemm_task, &c, (N + 3) / 4, par ? nt : 1, 1);
    }
    return c.err;
}

void er_fill_gemm_avx512(er_kernels_t *k) { k->gemm = matmul_gemm_avx512; }

#endif
