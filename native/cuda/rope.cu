// Rotary position embedding, in place on x (T, H, hd) at positions pos (T,).
// neox = 1 rotates pairs (i, i + hd/2) (GPT-NeoX / Qwen2 style); 0 rotates (2i, 2i + 1) (original).
// Angles are computed in double, as the CPU reference does: pos * pos_scale * base^(-2i/hd).
#include "common.cuh"

extern "C" __global__ void rope_f32(float* x, const int* pos, int T, int H, int hd, double base,
                                    double pos_scale, int neox) {
    const int half = hd >> 1;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)T * H * half) return;
    const int i = (int)(idx % half);
    const i64 th = idx / half;  // t * H + h
    const int t = (int)(th / H);
    const double inv = pow(base, -(double)(2 * i) / (double)hd);
    const double ang = (double)pos[t] * pos_scale * inv;
    const float c = (float)cos(ang), s = (float)sin(ang);
    float* v = x + th * hd;
    const int ia = neox ? i : 2 * i;
    const int ib = neox ? i + half : 2 * i + 1;
    const float a = v[ia], b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = a * s + b * c;
}
