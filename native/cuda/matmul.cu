// Quantized matrix products, dequantize and row gather for every GGML type of the traits table.
//
// mul_mat_<type>(W, X, Y, N, K, B, row_bytes): Y (B, N) = X (B, K) @ W^T, W (N, row_bytes) in its
//   GGML block layout. One warp per output row; each lane dequantizes 16-element groups once and
//   dots them with up to MM_BT activation rows (grid.y tiles the batch). Memory-bound matvec for
//   decode; for large batches the backend dequantizes to f32 (dequant_<type>) and uses cuBLAS.
// dequant_<type>(W, Y, N, K, row_bytes): Y (N, K) f32; dequant_h_<type>: the same in f16 (tensor-core GEMMs).
// get_rows_<type>(W, ids, Y, T, K, row_bytes): Y (T, K) f32 = rows ids of W.
#include "common.cuh"

#define MM_BT 8

template <int QT>
__device__ __forceinline__ void mul_mat_impl(const u8* __restrict__ W, const float* __restrict__ X,
                                             float* __restrict__ Y, int N, int K, int B, i64 row_bytes) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + warp;
    const int b0 = blockIdx.y * MM_BT;
    if (n >= N) return;
    const int nb = min(MM_BT, B - b0);
    const u8* row = W + (i64)n * row_bytes;
    const int ngroups = K >> 4;
    float acc[MM_BT];
#pragma unroll
    for (int b = 0; b < MM_BT; b++) acc[b] = 0.0f;
    for (int gi = lane; gi < ngroups; gi += WARP) {
        float w[16];
        deq_group<QT>(row, gi, w);
#pragma unroll
        for (int b = 0; b < MM_BT; b++) {
            if (b < nb) {
                const float4* x = (const float4*)(X + (i64)(b0 + b) * K + 16 * gi);
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float4 v = x[j];
                    s += w[4 * j] * v.x + w[4 * j + 1] * v.y + w[4 * j + 2] * v.z + w[4 * j + 3] * v.w;
                }
                acc[b] += s;
            }
        }
    }
#pragma unroll
    for (int b = 0; b < MM_BT; b++) {
        if (b < nb) {  // warp-uniform: only the rows this tile has are reduced
            const float s = warp_sum(acc[b]);
            if (lane == 0) Y[(i64)(b0 + b) * N + n] = s;
        }
    }
}

template <int QT>
__device__ __forceinline__ void dequant_impl(const u8* __restrict__ W, float* __restrict__ Y, int N, int K,
                                             i64 row_bytes) {
    const int gpr = K >> 4;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)N * gpr) return;
    const i64 n = idx / gpr;
    const int gi = (int)(idx - n * gpr);
    float w[16];
    deq_group<QT>(W + n * row_bytes, gi, w);
    float4* y = (float4*)(Y + n * K + 16 * gi);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float4 v;
        v.x = w[4 * j]; v.y = w[4 * j + 1]; v.z = w[4 * j + 2]; v.w = w[4 * j + 3];
        y[j] = v;
    }
}

// the same, to f16 (the tensor-core GEMM's input)
template <int QT>
__device__ __forceinline__ void dequant_h_impl(const u8* __restrict__ W, u16* __restrict__ Y, int N, int K,
                                               i64 row_bytes) {
    const int gpr = K >> 4;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)N * gpr) return;
    const i64 n = idx / gpr;
    const int gi = (int)(idx - n * gpr);
    float w[16];
    deq_group<QT>(W + n * row_bytes, gi, w);
    u16* y = Y + n * K + 16 * gi;
#pragma unroll
    for (int j = 0; j < 16; j++) y[j] = f2h(w[j]);
}

template <int QT>
__device__ __forceinline__ void get_rows_impl(const u8* __restrict__ W, const int* __restrict__ ids,
                                              float* __restrict__ Y, int T, int K, i64 row_bytes) {
    const int gpr = K >> 4;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)T * gpr) return;
    const i64 t = idx / gpr;
    const int gi = (int)(idx - t * gpr);
    float w[16];
    deq_group<QT>(W + (i64)ids[t] * row_bytes, gi, w);
    float* y = Y + t * K + 16 * gi;
#pragma unroll
    for (int j = 0; j < 16; j++) y[j] = w[j];
}

#define DEFINE_TYPE(name, QT)                                                                          \
    extern "C" __global__ void mul_mat_##name(const u8* W, const float* X, float* Y, int N, int K, int B, \
                                              i64 row_bytes) {                                         \
        mul_mat_impl<QT>(W, X, Y, N, K, B, row_bytes);                                                \
    }                                                                                                  \
    extern "C" __global__ void dequant_##name(const u8* W, float* Y, int N, int K, i64 row_bytes) {   \
        dequant_impl<QT>(W, Y, N, K, row_bytes);                                                      \
    }                                                                                                  \
    extern "C" __global__ void dequant_h_##name(const u8* W, u16* Y, int N, int K, i64 row_bytes) {   \
        dequant_h_impl<QT>(W, Y, N, K, row_bytes);                                                    \
    }                                                                                                  \
    extern "C" __global__ void get_rows_##name(const u8* W, const int* ids, float* Y, int T, int K,   \
                                               i64 row_bytes) {                                        \
        get_rows_impl<QT>(W, ids, Y, T, K, row_bytes);                                                \
    }

DEFINE_TYPE(f32, QT_F32)
DEFINE_TYPE(f16, QT_F16)
DEFINE_TYPE(bf16, QT_BF16)
DEFINE_TYPE(q4_0, QT_Q4_0)
DEFINE_TYPE(q4_1, QT_Q4_1)
DEFINE_TYPE(q5_0, QT_Q5_0)
DEFINE_TYPE(q5_1, QT_Q5_1)
DEFINE_TYPE(q8_0, QT_Q8_0)
DEFINE_TYPE(q4_k, QT_Q4_K)
DEFINE_TYPE(q5_k, QT_Q5_K)
DEFINE_TYPE(q6_k, QT_Q6_K)
