// RMSNorm over rows, QK-norm (per-head RMSNorm of q and k in one launch) and light elementwise ops.
#include "common.cuh"

// block-wide sum for blockDim.x a multiple of 32 (<= 1024)
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    const int nw = blockDim.x >> 5;
    v = (threadIdx.x < nw) ? red[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) red[0] = v;
    __syncthreads();
    const float r = red[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ void rms_row(const float* x, const float* w, float* y, int D, float eps) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss);
    const float r = rsqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) y[i] = x[i] * r * (w ? w[i] : 1.0f);
}

// y (rows, D) = rmsnorm(x) * w; one block per row; y may alias x
extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int rows, int D, float eps) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    rms_row(x + (i64)r * D, w, y + (i64)r * D, D, eps);
}

// in place: q (rows_q, hd) and k (rows_k, hd) head vectors normalised with wq / wk; one block per head
extern "C" __global__ void qk_norm_f32(float* q, float* k, const float* wq, const float* wk, int rows_q,
                                       int rows_k, int hd, float eps) {
    const int r = blockIdx.x;
    if (r < rows_q) {
        rms_row(q + (i64)r * hd, wq, q + (i64)r * hd, hd, eps);
    } else if (r < rows_q + rows_k) {
        const int rk = r - rows_q;
        rms_row(k + (i64)rk * hd, wk, k + (i64)rk * hd, hd, eps);
    }
}

// x (rows, D) += b (D,)
extern "C" __global__ void add_bias_f32(float* x, const float* b, int rows, int D) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (i64)rows * D) x[i] += b[i % D];
}

// y = a + b (n elements); y may alias a
extern "C" __global__ void add_f32(const float* a, const float* b, float* y, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

// y = act(g) * u; act 0 = silu, 1 = gelu (tanh approximation)
extern "C" __global__ void act_mul_f32(const float* g, const float* u, float* y, i64 n, int act) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = g[i];
    float a;
    if (act == 0) {
        a = x / (1.0f + expf(-x));
    } else {
        a = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    }
    y[i] = a * u[i];
}

// x *= s
extern "C" __global__ void scale_f32(float* x, float s, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}
