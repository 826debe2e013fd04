// Writes of this step's K and V rows into the paged cache through a slot mapping.
// Cache layout per layer: (num_blocks * block_size, KVH, hd) f16 (halves the bytes attention reads,
// and rounds as the CPU's f16 cache does); slot = block * block_size + offset.
#include "common.cuh"

// k, v (T, W) f32 with W = KVH * hd; slots (T,) int32
extern "C" __global__ void kv_write_f16(u16* kc, u16* vc, const float* k, const float* v, const int* slots,
                                        int T, int W) {
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)T * W) return;
    const int t = (int)(idx / W);
    const int j = (int)(idx - (i64)t * W);
    const i64 dst = (i64)slots[t] * W + j;
    kc[dst] = f2h(k[idx]);
    vc[dst] = f2h(v[idx]);
}
