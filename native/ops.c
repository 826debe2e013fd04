/*
 * edgerun native kernels: the light ops (rms_norm, rope, softmax, gated activations, add,
 * f32 -> f16), portable C spread over the thread pool when the tensor is large enough.
 */
#include "common.h"

ER_API void er_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = f2h(x[i]);
}

typedef struct {
    const float *x, *w;
    float *out;
    int D;
    float eps;
} rms_ctx_t;

static void rms_task(void *p, int r0, int r1) {
    const rms_ctx_t *c = p;
    const int D = c->D;
    for (int r = r0; r < r1; r++) {
        const float *xr = c->x + (size_t)r * D;
        float *o = c->out + (size_t)r * D;
        double ss = 0.0;
        for (int i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
        const float sc = (float)(1.0 / sqrt(ss / D + c->eps));
        if (c->w) for (int i = 0; i < D; i++) o[i] = xr[i] * sc * c->w[i];
        else for (int i = 0; i < D; i++) o[i] = xr[i] * sc;
    }
}

static int light_threads(int64_t work) {
    const int nt = nthreads();
    return nt > 1 && work >= (1 << 18) ? nt : 1;
}

ER_API void er_rms_norm(const float *x, const float *w, float *out, int R, int D, float eps) {
    rms_ctx_t c = {x, w, out, D, eps};
    pool_run(rms_task, &c, R, light_threads((int64_t)R * D), 1);
}

/* x: (T, H, D) in place; rotates the first n_rot dims of each head. neox: pairs (i, i+n_rot/2), else (2i, 2i+1) */
typedef struct {
    float *x;
    const int32_t *pos;
    int H, D, n_rot, neox;
    float theta_base;
} rope_ctx_t;

static void rope_task(void *p, int t0, int t1) {
    const rope_ctx_t *c = p;
    float *x = c->x;
    const int32_t *pos = c->pos;
    const int H = c->H, D = c->D, n_rot = c->n_rot, neox = c->neox, half = n_rot / 2;
    const float theta_base = c->theta_base;
    {
        float *cs = malloc(sizeof(float) * 2 * (half > 0 ? half : 1));
        if (!cs) return;
        for (int t = t0; t < t1; t++) {
            for (int i = 0; i < half; i++) {
                const double th = (double)pos[t] * pow((double)theta_base, -2.0 * i / n_rot);
                cs[2 * i] = (float)cos(th);
                cs[2 * i + 1] = (float)sin(th);
            }
            for (int h = 0; h < H; h++) {
                float *v = x + ((size_t)t * H + h) * D;
                for (int i = 0; i < half; i++) {
                    const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                    const float a = v[i0], b = v[i1], c = cs[2 * i], s = cs[2 * i + 1];
                    v[i0] = a * c - b * s;
                    v[i1] = a * s + b * c;
                }
            }
        }
        free(cs);
    }
}

ER_API void er_rope(float *x, const int32_t *pos, int T, int H, int D, int n_rot, float theta_base, int neox) {
    rope_ctx_t c = {x, pos, H, D, n_rot, neox, theta_base};
    pool_run(rope_task, &c, T, light_threads((int64_t)T * H * D), 1);
}

typedef struct {
    float *x;
    int D;
} softmax_ctx_t;

static void softmax_task(void *p, int r0, int r1) {
    const softmax_ctx_t *c = p;
    const int D = c->D;
    for (int r = r0; r < r1; r++) {
        float *v = c->x + (size_t)r * D;
        float m = -INFINITY;
        for (int i = 0; i < D; i++) m = v[i] > m ? v[i] : m;
        double s = 0.0;
        for (int i = 0; i < D; i++) { v[i] = expf(v[i] - m); s += v[i]; }
        const float inv = (float)(1.0 / s);
        for (int i = 0; i < D; i++) v[i] *= inv;
    }
}

ER_API void er_softmax(float *x, int R, int D) {
    softmax_ctx_t c = {x, D};
    pool_run(softmax_task, &c, R, light_threads((int64_t)R * D), 1);
}

/* act(g) * u over [i0, i1): gelu (tanh) when act, else silu (fast_expf, common.h) */
ER_CLONES void act_gate_range(const float *g, const float *u, float *out, int64_t i0, int64_t i1, int act) {
    if (act) {
        for (int64_t i = i0; i < i1; i++) out[i] = gelu_tanh(g[i]) * u[i];
    } else {
        for (int64_t i = i0; i < i1; i++) out[i] = silu(g[i]) * u[i];
    }
}

typedef struct {
    const float *g, *u;
    float *out;
    int64_t n;
    int act;
} gate_ctx_t;

#define GATE_BLK 4096
static void gate_task(void *p, int j0, int j1) {
    const gate_ctx_t *c = p;
    const int64_t i0 = (int64_t)j0 * GATE_BLK, i1 = (int64_t)j1 * GATE_BLK < c->n ? (int64_t)j1 * GATE_BLK : c->n;
    act_gate_range(c->g, c->u, c->out, i0, i1, c->act);
}

/* act: 0 = silu, 1 = gelu (tanh) */
ER_API void er_act_gate(const float *g, const float *u, float *out, int64_t n, int act) {
    if (n <= 0) return;
    gate_ctx_t c = {g, u, out, n, act};
    pool_run(gate_task, &c, (int)((n + GATE_BLK - 1) / GATE_BLK), light_threads(n), 1);
}

ER_API void er_add(const float *a, const float *b, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

