/*
 * edgerun native kernels: the generic (scalar) kernels, the oracle the ISA files are tested
 * against, and the ones every table starts from (er_fill_generic).
 *
 *  - decode_<type>_generic: one on-disk weight row -> int8 values w, lane scales wl (one per 4
 *    values) and, for types with mins, additive terms mw (one per 16): value[i] = w[i] * wl[i/4] + mw[i/16];
 *  - dot_decoded_q8_0_generic: a decoded row against up to 4 q8_0 activation rows;
 *  - vec_dot_<float type>_f32_generic: float-type rows against float activations.
 */
#include "common.h"

AI void fill8(float *p, float v) { for (int i = 0; i < 8; i++) p[i] = v; }

static int decode_q4_0_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_0 *bk = (const block_q4_0 *)row;
    for (int i = 0; i < K / 32; i++) {
        for (int j = 0; j < 16; j++) {
            w[32 * i + j] = (int8_t)((bk[i].qs[j] & 15) - 8);
            w[32 * i + j + 16] = (int8_t)((bk[i].qs[j] >> 4) - 8);
        }
        fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
    }
    return 0;
}

static int decode_q4_1_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_1 *bk = (const block_q4_1 *)row;
    for (int i = 0; i < K / 32; i++) {
        for (int j = 0; j < 16; j++) {
            w[32 * i + j] = (int8_t)(bk[i].qs[j] & 15);
            w[32 * i + j + 16] = (int8_t)(bk[i].qs[j] >> 4);
        }
        fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
        mw[2 * i] = mw[2 * i + 1] = h2f(rd16(&bk[i].m));
    }
    return 1;
}

static int decode_q5_0_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_0 *bk = (const block_q5_0 *)row;
    for (int i = 0; i < K / 32; i++) {
        uint32_t qh;
        memcpy(&qh, bk[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            w[32 * i + j] = (int8_t)(((bk[i].qs[j] & 15) | (((qh >> j) & 1) << 4)) - 16);
            w[32 * i + j + 16] = (int8_t)(((bk[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
        }
        fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
    }
    return 0;
}

static int decode_q5_1_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_1 *bk = (const block_q5_1 *)row;
    for (int i = 0; i < K / 32; i++) {
        uint32_t qh;
        memcpy(&qh, bk[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            w[32 * i + j] = (int8_t)((bk[i].qs[j] & 15) | (((qh >> j) & 1) << 4));
            w[32 * i + j + 16] = (int8_t)((bk[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        }
        fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
        mw[2 * i] = mw[2 * i + 1] = h2f(rd16(&bk[i].m));
    }
    return 1;
}

static int decode_q8_0_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q8_0 *bk = (const block_q8_0 *)row;
    for (int i = 0; i < K / 32; i++) {
        memcpy(w + 32 * i, bk[i].qs, 32);
        fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
    }
    return 0;
}

static int decode_q4_K_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q4_K *bk = (const block_q4_K *)row;
    for (int i = 0; i < K / 256; i++) {
        const float d = h2f(rd16(&bk[i].d)), dmin = h2f(rd16(&bk[i].dmin));
        for (int j = 0; j < 8; j++) {
            int sc, m;
            get_scale_min_k4(j, bk[i].scales, &sc, &m);
            const uint8_t *qs = bk[i].qs + 32 * (j >> 1);
            const int sh = 4 * (j & 1);
            int8_t *o = w + 256 * i + 32 * j;
            for (int l = 0; l < 32; l++) o[l] = (int8_t)((qs[l] >> sh) & 15);
            fill8(wl + 64 * i + 8 * j, d * (float)sc);
            mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
        }
    }
    return 1;
}

static int decode_q5_K_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q5_K *bk = (const block_q5_K *)row;
    for (int i = 0; i < K / 256; i++) {
        const float d = h2f(rd16(&bk[i].d)), dmin = h2f(rd16(&bk[i].dmin));
        for (int j = 0; j < 8; j++) {
            int sc, m;
            get_scale_min_k4(j, bk[i].scales, &sc, &m);
            const uint8_t *qs = bk[i].qs + 32 * (j >> 1);
            const int sh = 4 * (j & 1);
            int8_t *o = w + 256 * i + 32 * j;
            for (int l = 0; l < 32; l++)
                o[l] = (int8_t)(((qs[l] >> sh) & 15) | (((bk[i].qh[l] >> j) & 1) << 4));
            fill8(wl + 64 * i + 8 * j, d * (float)sc);
            mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
        }
    }
    return 1;
}

static int decode_q6_K_generic(const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    const block_q6_K *bk = (const block_q6_K *)row;
    for (int i = 0; i < K / 256; i++) {
        const float d = h2f(rd16(&bk[i].d));
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = bk[i].ql + 64 * h, *qh = bk[i].qh + 32 * h;
            int8_t *o = w + 256 * i + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        for (int g = 0; g < 16; g++) {
            const float v = d * (float)bk[i].scales[g];
            float *p = wl + 64 * i + 4 * g;
            p[0] = p[1] = p[2] = p[3] = v;
        }
    }
    return 0;
}

/* res[r] = sum_i value[i] * xdeq[b+r][i] for r < nr */
static void dot_decoded_q8_0_generic(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b,
                                     int nr, float *res) {
    for (int r = 0; r < nr; r++) {
        const int8_t *q = A->q + (size_t)(b + r) * K;
        const float *xl = A->l + (size_t)(b + r) * K / 4;
        float acc = 0.f;
        for (int i = 0; i < K / 4; i++) {
            int p = w[4 * i] * q[4 * i] + w[4 * i + 1] * q[4 * i + 1] + w[4 * i + 2] * q[4 * i + 2] +
                    w[4 * i + 3] * q[4 * i + 3];
            acc += (float)p * wl[i] * xl[i];
        }
        if (mw) {
            const float *xs = A->s + (size_t)(b + r) * K / 16;
            for (int g = 0; g < K / 16; g++) acc += mw[g] * xs[g];
        }
        res[r] = acc;
    }
}

AI void vec_dot_float_generic(int qt, const uint8_t *row, int K, const float *x, int nr, float *res) {
    for (int r = 0; r < nr; r++) res[r] = 0.f;
    for (int k = 0; k < K; k++) {
        const float wv = fw_scalar(qt, row, k);
        for (int r = 0; r < nr; r++) res[r] += wv * x[(size_t)r * K + k];
    }
}

static void vec_dot_f32_f32_generic(const uint8_t *row, int K, const float *x, int nr, float *res) {
    vec_dot_float_generic(ER_F32, row, K, x, nr, res);
}
static void vec_dot_f16_f32_generic(const uint8_t *row, int K, const float *x, int nr, float *res) {
    vec_dot_float_generic(ER_F16, row, K, x, nr, res);
}
static void vec_dot_bf16_f32_generic(const uint8_t *row, int K, const float *x, int nr, float *res) {
    vec_dot_float_generic(ER_BF16, row, K, x, nr, res);
}

void er_fill_generic(er_kernels_t *k) {
    er_type_traits_t *t = k->type;
    er_fill_act_generic(k);
    k->dot_decoded = dot_decoded_q8_0_generic;
    t[ER_F32].fdot = vec_dot_f32_f32_generic;
    t[ER_F16].fdot = vec_dot_f16_f32_generic;
    t[ER_BF16].fdot = vec_dot_bf16_f32_generic;
    t[ER_Q4_0].decode = decode_q4_0_generic;
    t[ER_Q4_1].decode = decode_q4_1_generic;
    t[ER_Q5_0].decode = decode_q5_0_generic;
    t[ER_Q5_1].decode = decode_q5_1_generic;
    t[ER_Q8_0].decode = decode_q8_0_generic;
    t[ER_Q4_K].decode = decode_q4_K_generic;
    t[ER_Q5_K].decode = decode_q5_K_generic;
    t[ER_Q6_K].decode = decode_q6_K_generic;
}
