// Attention over the paged KV cache: causal, grouped-query (GQA), optional sliding window.
//
// Query row r (of R rows, heads H, head size hd <= 256) belongs to sequence q_seq[r] at position
// q_pos[r]; it sees keys at positions p with max(0, q_pos - window + 1) <= p <= q_pos (window 0 =
// unlimited), read from the cache through block_tables[q_seq[r]] (max_blocks ids per sequence):
// slot(p) = table[p / block_size] * block_size + p % block_size. This step's K/V must already be
// written (kv_write_f16). Cache layout: (slots, KVH, hd) f16; query head h reads KV head h / (H / KVH).
//
// Decode (few rows, long contexts): attn_paged_partial splits each row's key range into n_split
// chunks (grid.z), each writing an unnormalised partial (max, sum, acc); attn_reduce merges them.
// Every size the kernels need comes from device memory, so a decode step can be graph-captured.
// Prefill (many rows of one sequence): attn_prefill shares K/V tiles in shared memory between
// ATT_PF_ROWS query rows.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_MAXD 8  // dims per lane: hd <= 256

__device__ __forceinline__ i64 kv_slot(const int* table, int p, int block_size) {
    return (i64)table[p / block_size] * block_size + (p % block_size);
}

extern "C" __global__ void attn_paged_partial(const float* __restrict__ q, const u16* __restrict__ kc,
                                              const u16* __restrict__ vc, const int* __restrict__ q_seq,
                                              const int* __restrict__ q_pos,
                                              const int* __restrict__ block_tables, int max_blocks,
                                              int block_size, int H, int KVH, int hd, float scale,
                                              int window, float* __restrict__ part_o,
                                              float* __restrict__ part_m, float* __restrict__ part_l) {
    const int h = blockIdx.x, r = blockIdx.y, split = blockIdx.z, n_split = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kh = h / (H / KVH);
    const int pos = q_pos[r];
    const int* table = block_tables + (i64)q_seq[r] * max_blocks;
    const int kmin = window > 0 ? max(0, pos - window + 1) : 0;
    const int n_keys = pos - kmin + 1;
    const int chunk = (n_keys + n_split - 1) / n_split;
    const int k0 = kmin + split * chunk;
    const int k1 = min(k0 + chunk, pos + 1);

    const float* qr = q + ((i64)r * H + h) * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int j = 0; j < ATT_MAXD; j++) {
        const int d = lane + WARP * j;
        qv[j] = d < hd ? qr[d] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int p = k0 + warp; p < k1; p += ATT_WARPS) {
        const i64 off = (kv_slot(table, p, block_size) * KVH + kh) * hd;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < ATT_MAXD; j++) {
            const int d = lane + WARP * j;
            if (d < hd) s += qv[j] * h2f(kc[off + d]);
        }
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float corr = __expf(m - mn), e = __expf(s - mn);
        l = l * corr + e;
#pragma unroll
        for (int j = 0; j < ATT_MAXD; j++) {
            const int d = lane + WARP * j;
            if (d < hd) acc[j] = acc[j] * corr + e * h2f(vc[off + d]);
        }
        m = mn;
    }
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAXD * WARP];
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
    for (int j = 0; j < ATT_MAXD; j++) sm_acc[warp][lane + WARP * j] = acc[j];
    __syncthreads();
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w]);
    const i64 prow = ((i64)r * H + h) * n_split + split;
    float L = 0.0f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) L += sm_m[w] == NEG_INF ? 0.0f : sm_l[w] * __expf(sm_m[w] - M);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm_m[w] != NEG_INF) o += sm_acc[w][d] * __expf(sm_m[w] - M);
        part_o[prow * hd + d] = o;
    }
    if (threadIdx.x == 0) { part_m[prow] = M; part_l[prow] = L; }
}

// out (R, H * hd) from the n_split partials of attn_paged_partial; grid (H, R)
extern "C" __global__ void attn_reduce(const float* __restrict__ part_o, const float* __restrict__ part_m,
                                       const float* __restrict__ part_l, float* __restrict__ out, int H,
                                       int hd, int n_split) {
    const int h = blockIdx.x, r = blockIdx.y;
    const i64 base = ((i64)r * H + h) * n_split;
    float M = NEG_INF;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, part_m[base + s]);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++)
        if (part_m[base + s] != NEG_INF) L += part_l[base + s] * __expf(part_m[base + s] - M);
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < n_split; s++)
            if (part_m[base + s] != NEG_INF) o += part_o[(base + s) * hd + d] * __expf(part_m[base + s] - M);
        out[((i64)r * H + h) * hd + d] = o * inv;
    }
}

#define ATT_PF_ROWS 8  // query rows per block (one warp each)
#define ATT_PF_KEYS 16  // keys per shared-memory tile

// Prefill: T query rows of ONE sequence (rows ascending in position), grid (H, ceil(T / ATT_PF_ROWS)),
// blockDim ATT_PF_ROWS * 32. out (T, H * hd).
extern "C" __global__ void attn_prefill(const float* __restrict__ q, const u16* __restrict__ kc,
                                        const u16* __restrict__ vc, const int* __restrict__ q_pos,
                                        const int* __restrict__ table, int block_size, int T, int H,
                                        int KVH, int hd, float scale, int window, float* __restrict__ out) {
    __shared__ float sk[ATT_PF_KEYS * ATT_MAXD * WARP];
    __shared__ float sv[ATT_PF_KEYS * ATT_MAXD * WARP];
    const int h = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kh = h / (H / KVH);
    const int r0 = blockIdx.y * ATT_PF_ROWS;
    const int r = r0 + warp;
    const int r_last = min(r0 + ATT_PF_ROWS, T) - 1;
    const bool active = r < T;
    const int pos = active ? q_pos[r] : -1;
    const int kmin = window > 0 ? max(0, pos - window + 1) : 0;
    // key range of the whole tile of rows
    const int first_pos = q_pos[r0];
    const int tile_k0 = window > 0 ? max(0, first_pos - window + 1) : 0;
    const int tile_k1 = q_pos[r_last] + 1;

    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int j = 0; j < ATT_MAXD; j++) {
        const int d = lane + WARP * j;
        qv[j] = (active && d < hd) ? q[((i64)r * H + h) * hd + d] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int t0 = tile_k0; t0 < tile_k1; t0 += ATT_PF_KEYS) {
        const int nk = min(ATT_PF_KEYS, tile_k1 - t0);
        __syncthreads();
        for (int i = threadIdx.x; i < nk * hd; i += blockDim.x) {
            const int kk = i / hd, d = i - kk * hd;
            const i64 off = (kv_slot(table, t0 + kk, block_size) * KVH + kh) * hd + d;
            sk[kk * hd + d] = h2f(kc[off]);
            sv[kk * hd + d] = h2f(vc[off]);
        }
        __syncthreads();
        if (!active) continue;
        for (int kk = 0; kk < nk; kk++) {
            const int p = t0 + kk;
            if (p < kmin || p > pos) continue;  // warp-uniform
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < ATT_MAXD; j++) {
                const int d = lane + WARP * j;
                if (d < hd) s += qv[j] * sk[kk * hd + d];
            }
            s = warp_sum(s);
            const float mn = fmaxf(m, s);
            const float corr = __expf(m - mn), e = __expf(s - mn);
            l = l * corr + e;
#pragma unroll
            for (int j = 0; j < ATT_MAXD; j++) {
                const int d = lane + WARP * j;
                if (d < hd) acc[j] = acc[j] * corr + e * sv[kk * hd + d];
            }
            m = mn;
        }
    }
    if (!active) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int j = 0; j < ATT_MAXD; j++) {
        const int d = lane + WARP * j;
        if (d < hd) out[((i64)r * H + h) * hd + d] = acc[j] * inv;
    }
}
