// Rotary position embedding, in place on x (T, H, hd) at positions pos (T,).
// neox = 1 rotates pairs (i, i + hd/2) (GPT-NeoX / Qwen2 style); 0 rotates (2i, 2i + 1) (original).
//
// FP32 only (FP64 runs at 1/64 rate on consumer GPUs): inv (hd/2, 2) holds each pair's frequency
// pos_scale * base^(-2i/hd), computed on the host in double and split into hi + lo floats. The angle
// pos * (hi + lo) is kept as a float plus its exact rounding error (fma), reduced modulo 2 pi with a
// three-part 2 pi (Cody-Waite) and only then rounded: about 1e-6 rad at position 30000, where a
// plain float product would be off by 1e-3.
#include "common.cuh"

extern "C" __global__ void rope_f32(float* x, const int* pos, const float* inv, int T, int H, int hd, int neox) {
    const int half = hd >> 1;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)T * H * half) return;
    const int i = (int)(idx % half);
    const i64 th = idx / half;  // t * H + h
    const int t = (int)(th / H);
    const float p = (float)pos[t];  // exact below 2^24
    const float hi = inv[2 * i], lo = inv[2 * i + 1];
    const float a = p * hi;
    const float e = fmaf(p, hi, -a) + p * lo;  // what a misses of p * (hi + lo)
    const float k = rintf(a * 0.159154943091895336f);  // turns
    float r = fmaf(-k, 6.28318548202514648f, a);  // 2 pi = 6.28318548202514648 - 1.7484556e-7 + ...
    r = fmaf(k, 1.74845553e-7f, r) + e;
    const float c = cosf(r), s = sinf(r);
    float* v = x + th * hd;
    const int ia = neox ? i : 2 * i;
    const int ib = neox ? i + half : 2 * i + 1;
    const float xa = v[ia], xb = v[ib];
    v[ia] = xa * c - xb * s;
    v[ib] = xa * s + xb * c;
}
