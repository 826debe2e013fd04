// edgerun CUDA kernels: shared types, GGML block layouts and the per-type dequantize table.
//
// Compiled both by nvcc (offline checks) and by NVRTC through CuPy at run time, so this file
// uses no host code and no standard headers: only built-in CUDA device functions. The host build
// of the emulated device (g++ with emu/cuda_emu.h included first) takes the #else branches.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define WARP 32
#define NEG_INF (-__int_as_float(0x7f800000))

// GGML type ids (on-disk values of gguf.GGMLQuantizationType)
#define QT_F32 0
#define QT_F16 1
#define QT_Q4_0 2
#define QT_Q4_1 3
#define QT_Q5_0 6
#define QT_Q5_1 7
#define QT_Q8_0 8
#define QT_Q4_K 12
#define QT_Q5_K 13
#define QT_Q6_K 14
#define QT_BF16 30

__device__ __forceinline__ float h2f(u16 h) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
#else
    return emu_half_to_float(h);  // host build through native/cuda/emu/cuda_emu.h
#endif
}

// float -> f16 bits, round to nearest even
__device__ __forceinline__ u16 f2h(float f) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
#else
    return emu_float_to_half(f);
#endif
}

__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ----------------------------------------------------------------------------- block layouts

struct block_q4_0 { u16 d; u8 qs[16]; };                      // 18 bytes, 32 elements
struct block_q4_1 { u16 d; u16 m; u8 qs[16]; };               // 20
struct block_q5_0 { u16 d; u8 qh[4]; u8 qs[16]; };            // 22
struct block_q5_1 { u16 d; u16 m; u8 qh[4]; u8 qs[16]; };     // 24
struct block_q8_0 { u16 d; i8 qs[32]; };                      // 34
struct block_q4_K { u16 d; u16 dmin; u8 scales[12]; u8 qs[128]; };               // 144, 256 elements
struct block_q5_K { u16 d; u16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; };    // 176
struct block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; u16 d; };              // 210

// 6-bit (scale, min) of sub-block s (0..7) of a Q4_K / Q5_K block
__device__ __forceinline__ void k_scale_min(const u8* sc, int s, int* scale, int* mn) {
    if (s < 4) {
        *scale = sc[s] & 63;
        *mn = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 0x0F) | ((sc[s - 4] >> 6) << 4);
        *mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
}

// ------------------------------------------------------------ the dequantize "function table"
// QTraits<QT>: BS elements per block, TS bytes per block, NG groups of 16 elements per block, and
// deq16(block, g, y): the 16 consecutive elements [16 g, 16 g + 16) of one block as floats.
// Float types use a virtual block of 16 elements, so every row is a run of 16-element groups.

template <int QT> struct QTraits;

template <> struct QTraits<QT_F32> {
    enum { BS = 16, TS = 64, NG = 1 };
    static __device__ __forceinline__ void deq16(const u8* p, int, float* y) {
        const float4* v = (const float4*)p;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float4 f = v[i];
            y[4 * i] = f.x; y[4 * i + 1] = f.y; y[4 * i + 2] = f.z; y[4 * i + 3] = f.w;
        }
    }
};

template <> struct QTraits<QT_F16> {
    enum { BS = 16, TS = 32, NG = 1 };
    static __device__ __forceinline__ void deq16(const u8* p, int, float* y) {
        const u16* v = (const u16*)p;
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = h2f(v[i]);
    }
};

template <> struct QTraits<QT_BF16> {
    enum { BS = 16, TS = 32, NG = 1 };
    static __device__ __forceinline__ void deq16(const u8* p, int, float* y) {
        const u16* v = (const u16*)p;
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = bf2f(v[i]);
    }
};

template <> struct QTraits<QT_Q4_0> {
    enum { BS = 32, TS = 18, NG = 2 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q4_0* b = (const block_q4_0*)p;
        const float d = h2f(b->d);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int q = g ? (b->qs[i] >> 4) : (b->qs[i] & 15);
            y[i] = d * (float)(q - 8);
        }
    }
};

template <> struct QTraits<QT_Q4_1> {
    enum { BS = 32, TS = 20, NG = 2 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q4_1* b = (const block_q4_1*)p;
        const float d = h2f(b->d), m = h2f(b->m);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int q = g ? (b->qs[i] >> 4) : (b->qs[i] & 15);
            y[i] = d * (float)q + m;
        }
    }
};

__device__ __forceinline__ u32 load_u32_bytes(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

template <> struct QTraits<QT_Q5_0> {
    enum { BS = 32, TS = 22, NG = 2 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q5_0* b = (const block_q5_0*)p;
        const float d = h2f(b->d);
        const u32 qh = load_u32_bytes(b->qh) >> (16 * g);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int q = (g ? (b->qs[i] >> 4) : (b->qs[i] & 15)) | (((qh >> i) & 1) << 4);
            y[i] = d * (float)(q - 16);
        }
    }
};

template <> struct QTraits<QT_Q5_1> {
    enum { BS = 32, TS = 24, NG = 2 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q5_1* b = (const block_q5_1*)p;
        const float d = h2f(b->d), m = h2f(b->m);
        const u32 qh = load_u32_bytes(b->qh) >> (16 * g);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int q = (g ? (b->qs[i] >> 4) : (b->qs[i] & 15)) | (((qh >> i) & 1) << 4);
            y[i] = d * (float)q + m;
        }
    }
};

template <> struct QTraits<QT_Q8_0> {
    enum { BS = 32, TS = 34, NG = 2 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q8_0* b = (const block_q8_0*)p;
        const float d = h2f(b->d);
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = d * (float)b->qs[16 * g + i];
    }
};

template <> struct QTraits<QT_Q4_K> {
    enum { BS = 256, TS = 144, NG = 16 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q4_K* b = (const block_q4_K*)p;
        const int s = g >> 1, h = g & 1;
        int sc, mn;
        k_scale_min(b->scales, s, &sc, &mn);
        const float d = h2f(b->d) * (float)sc, m = h2f(b->dmin) * (float)mn;
        const u8* q = b->qs + 32 * (s >> 1) + 16 * h;
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = d * (float)((q[i] >> shift) & 15) - m;
    }
};

template <> struct QTraits<QT_Q5_K> {
    enum { BS = 256, TS = 176, NG = 16 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q5_K* b = (const block_q5_K*)p;
        const int s = g >> 1, h = g & 1;
        int sc, mn;
        k_scale_min(b->scales, s, &sc, &mn);
        const float d = h2f(b->d) * (float)sc, m = h2f(b->dmin) * (float)mn;
        const u8* q = b->qs + 32 * (s >> 1) + 16 * h;
        const u8* qh = b->qh + 16 * h;
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int v = ((q[i] >> shift) & 15) | (((qh[i] >> s) & 1) << 4);
            y[i] = d * (float)v - m;
        }
    }
};

template <> struct QTraits<QT_Q6_K> {
    enum { BS = 256, TS = 210, NG = 16 };
    static __device__ __forceinline__ void deq16(const u8* p, int g, float* y) {
        const block_q6_K* b = (const block_q6_K*)p;
        const int half = g >> 3, quarter = (g >> 1) & 3, l0 = 16 * (g & 1);
        const u8* ql = b->ql + 64 * half + 32 * (quarter & 1) + l0;
        const u8* qh = b->qh + 32 * half + l0;
        const int lshift = 4 * (quarter >> 1), hshift = 2 * quarter;
        const float d = h2f(b->d) * (float)b->scales[g];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int q = ((ql[i] >> lshift) & 15) | (((qh[i] >> hshift) & 3) << 4);
            y[i] = d * (float)(q - 32);
        }
    }
};

// group gi (0 .. K/16) of a row -> 16 floats
template <int QT>
__device__ __forceinline__ void deq_group(const u8* row, int gi, float* y) {
    typedef QTraits<QT> T;
    QTraits<QT>::deq16(row + (i64)(gi / T::NG) * T::TS, gi % T::NG, y);
}
