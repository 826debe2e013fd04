/*
 * edgerun native kernels: activation quantization (generic code; the AVX-512 rows are in
 * arch/x86/avx512.c and reached through the kernel table).
 *
 * Two formats, both rounded half away from zero at 127 / amax:
 *  - q8_0: int8 with a scale per 32 values (or per 256 values, written per 32, for the K-quant
 *    rounding: act_t.g256), plus the lane scales, the -128 * sums of 4 (VNNI offsets), the scaled
 *    sums of 16 and 32 and the plain sums of 32 that the kernel families use;
 *  - q8_K: int8 with one scale per 256 values and int16 sums per 16 (the K-quant fused kernels).
 */
#include "common.h"

/* one block of 32 at the scale of amax (its own, or its 256-group's) */
AI void quant_block32(const float *x, float amax, int8_t *q, float *l, float *s, int32_t *n) {
    const float d = amax / 127.f;
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    int sum16[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
        float v = x[i] * id;
        int qi = (int)(v + (v >= 0.f ? 0.5f : -0.5f));
        q[i] = (int8_t)qi;
        sum16[i >> 4] += qi;
    }
    for (int i = 0; i < 8; i++) {
        l[i] = d;
        n[i] = -128 * (q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
    }
    s[0] = d * (float)sum16[0];
    s[1] = d * (float)sum16[1];
}

static float amax_of(const float *x, int n) {
    float amax = 0.f;
    for (int i = 0; i < n; i++) { float a = fabsf(x[i]); amax = amax > a ? amax : a; }
    return amax;
}

/* group: 32, or 256 (one scale per 256 values, written per block of 32) */
static void quantize_row_q8_0_generic(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n) {
    float amax = 0.f;
    for (int b = 0; b < K / 32; b++) {
        if ((32 * b) % group == 0) amax = amax_of(x + 32 * b, K - 32 * b < group ? K - 32 * b : group);
        quant_block32(x + 32 * b, amax, q + 32 * b, l + 8 * b, s + 2 * b, n + 8 * b);
    }
}


int act_alloc(act_t *a, int B, int K, int want32, int wantk) {
    memset(a, 0, sizeof(*a));
    a->K = K;
    if (want32) {
        a->q = scratch(0, (size_t)B * K);
        a->l = scratch(1, (size_t)B * K);         /* K/4 floats */
        a->s = scratch(2, (size_t)B * (K / 4));   /* K/16 floats */
        a->n = scratch(3, (size_t)B * K);         /* K/4 int32 */
        a->s32 = scratch(4, (size_t)B * (K / 8)); /* K/32 floats */
        a->sq = scratch(12, (size_t)B * (K / 8)); /* K/32 int32 */
        if (!a->q || !a->l || !a->s || !a->n || !a->s32 || !a->sq) return ER_E_NOMEM;
    }
    if (wantk) {
        a->kq = scratch(5, (size_t)B * K);
        a->kd = scratch(6, (size_t)B * (K / 64) + 4); /* K/256 floats */
        a->kb = scratch(7, (size_t)B * (K / 8));      /* K/16 int16 */
        if (!a->kq || !a->kd || !a->kb) return ER_E_NOMEM;
    }
    return 0;
}


static void quantize_row_q8_K_generic(const float *x, int K, int8_t *q, float *d, int16_t *bsum) {
    for (int i = 0; i < K / 256; i++) {
        const float *xb = x + 256 * i;
        float amax = 0.f;
        for (int j = 0; j < 256; j++) { float v = fabsf(xb[j]); amax = amax > v ? amax : v; }
        d[i] = amax / 127.f;
        const float id = amax > 0.f ? 127.f / amax : 0.f;
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; j++) {
                float v = xb[j] * id;
                int qi = (int)(v + (v >= 0.f ? 0.5f : -0.5f));
                q[256 * i + j] = (int8_t)qi;
                sum += qi;
            }
            bsum[16 * i + g] = (int16_t)sum;
        }
    }
}

void act_quantize(act_t *a, const float *x, int B, int K) {
    const er_kernels_t *k = er_kern();
    if (a->q) {
        for (int b = 0; b < B; b++)
            k->quantize_row_q8_0(x + (size_t)b * K, K, a->g256 && K % 256 == 0 ? 256 : 32, a->q + (size_t)b * K,
                                 a->l + (size_t)b * K / 4, a->s + (size_t)b * K / 16, a->n + (size_t)b * K / 4);
        for (size_t i = 0; i < (size_t)B * K / 32; i++) {
            a->s32[i] = a->s[2 * i] + a->s[2 * i + 1];
            int32_t t = 0;
            for (int j = 0; j < 8; j++) t += a->n[8 * i + j];
            a->sq[i] = -t / 128;
        }
    }
    if (a->kq)
        for (int b = 0; b < B; b++)
            k->quantize_row_q8_K(x + (size_t)b * K, K, a->kq + (size_t)b * K, a->kd + (size_t)b * (K / 256),
                                 a->kb + (size_t)b * (K / 16));
}

/* Q4_0 / Q5_0 weights enter the fused kernels as q + 128 with q = value + 8 (16): their
 * activation block sums carry the offset -(128 + 8) * sum (or 144). A copy of A with those sums
 * (off_shift from the type's traits; A itself when 0). */
const act_t *act_offset_variant(int off_shift, const act_t *A, int B, int K, act_t *A2, int slot) {
    if (!off_shift) return A;
    const size_t m = (size_t)B * K / 4;
    int32_t *xn = scratch(slot, m * 4);
    if (!xn) return NULL;
    for (size_t i = 0; i < m; i++) xn[i] = A->n[i] + (A->n[i] >> off_shift);
    *A2 = *A;
    A2->n = xn;
    return A2;
}

void er_fill_act_generic(er_kernels_t *k) {
    k->quantize_row_q8_0 = quantize_row_q8_0_generic;
    k->quantize_row_q8_K = quantize_row_q8_K_generic;
}
