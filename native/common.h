/*
 * edgerun native kernels, internal header: what the portable files and the ISA files under arch/
 * share. Declarations, small inline helpers and shared structs only; every function body that is
 * not `static inline` lives in exactly one .c file.
 *
 * The kernel table (er_kernels_t): one per ISA level, filled once at ISA detection by
 * er_fill_generic and the arch files' er_fill_* functions; er_set_isa() only switches which table
 * er_kern() returns. Each quant type has one er_type_traits_t row: its format facts (block size,
 * activation format, repack layout) and its kernel of each family, or NULL where this ISA has none.
 * The callers (matmul.c, ffn.c, attention.c) pick kernels only through this table.
 *
 * Kernel names say the weight type, the activation type and the ISA, as in ggml:
 * fused_q4_K_q8_K_avx512 dots Q4_K weight rows with Q8_K-style activations on AVX-512 VNNI.
 * Activation formats: "q8_0" = int8 with a float scale per 32 values (plus the sums the offsets
 * need); "q8_K" = int8 with one scale per 256 values and int16 sums per 16.
 */
#ifndef EDGERUN_COMMON_H
#define EDGERUN_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "include/edgerun.h"

/* Batches up to this size use the register-blocked small-batch kernels; larger ones the GEMM. */
#ifndef ER_FUSED_MAX_B
#define ER_FUSED_MAX_B 16
#endif
/* activation rows per pass of the AVX-512 fused row kernels (AVX2 ones: 4) */
#define ER_V512_NR 8

#if defined(__x86_64__) && !defined(ER_NO_X86)
#define ER_X86 1
#endif

#define ER_API __attribute__((visibility("default")))
#define AI static inline __attribute__((always_inline))

#define ISA_SCALAR 0
#define ISA_AVX2 1
#define ISA_AVX512VNNI 2
#define ER_NISA 3

/* ------------------------------------------------------------------ number formats */

AI uint16_t rd16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }

AI float h2f(uint16_t h) {
    union { uint32_t u; float f; } o;
    o.u = (uint32_t)(h & 0x7fff) << 13;
    o.f *= 0x1p112f;
    if (o.f >= 65536.0f) o.u |= 255u << 23;
    o.u |= (uint32_t)(h & 0x8000) << 16;
    return o.f;
}

/* float -> IEEE half, round to nearest even (numpy's astype(float16)): overflow to inf, NaN kept
 * quiet, subnormals by one float add that leaves the rounded units in the low mantissa bits */
AI uint16_t f2h(float f) {
    union { float f; uint32_t u; } v = {f};
    const uint16_t sign = (uint16_t)((v.u >> 16) & 0x8000u);
    uint32_t a = v.u & 0x7fffffffu;
    if (a >= 0x47800000u) return sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u); /* >= 65536, inf, NaN */
    if (a < 0x38800000u) { /* below 2^-14: a half subnormal or zero */
        union { uint32_t u; float f; } m = {a};
        m.f += 0.5f;
        return sign | (uint16_t)(m.u - 0x3f000000u);
    }
    a += 0xc8000fffu + ((a >> 13) & 1u); /* rebias the exponent by -112 and round the dropped 13 bits */
    return sign | (uint16_t)(a >> 13);
}

AI float bf2f(uint16_t h) {
    union { uint32_t u; float f; } o;
    o.u = (uint32_t)h << 16;
    return o.f;
}

/* element k of a float-type row (F32, F16, BF16) */
AI float fw_scalar(int qt, const uint8_t *row, int k) {
    if (qt == ER_F32) { float f; memcpy(&f, row + 4 * (size_t)k, 4); return f; }
    if (qt == ER_F16) return h2f(rd16(row + 2 * (size_t)k));
    return bf2f(rd16(row + 2 * (size_t)k));
}

/* the 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block */
AI void get_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* exp(x) = 2^n * e^r, n = round(x / ln2), r = x - n ln2 (ln2 split in two for precision), e^r by a
 * degree-7 polynomial; shared by the scalar and the SIMD versions (arch/x86: exp256, exp512) */
#define EXP_LOG2E 1.4426950408889634f
#define EXP_LN2_HI 0.693145751953125f
#define EXP_LN2_LO 1.428606765330187e-06f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* exp for the activations: branch-free so the loops vectorize (rel. error ~2e-7 on [-87, 88]) */
AI float fast_expf(float x) {
    x = __builtin_fminf(__builtin_fmaxf(x, -87.f), 88.f);
    const float t = x * EXP_LOG2E;
    const float n = (t + 12582912.f) - 12582912.f; /* round to nearest (|t| < 2^22) */
    const float r = (x - n * EXP_LN2_HI) - n * EXP_LN2_LO; /* |r| <= ln2/2 */
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    p = p * r * r + r + 1.f;
    union { uint32_t u; float f; } s;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * s.f;
}

AI float silu(float g) { return g / (1.f + fast_expf(-g)); }
AI float gelu_tanh(float g) {
    /* 0.5 g (1 + tanh(y)) = g * sigmoid(2y) */
    const float y = 0.7978845608028654f * (g + 0.044715f * g * g * g);
    return g / (1.f + fast_expf(-2.f * y));
}

/* portable loops the compiler vectorizes once per ISA (ops.c, attention.c) */
#if defined(ER_X86)
#define ER_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("finite-math-only")))
#else
#define ER_CLONES
#endif

/* ------------------------------------------------------------------ memory and threads (pool.c) */

void *amalloc(size_t n); /* 64-byte aligned, free() it */

/* Per-thread grow-only scratch buffers (no malloc per call); slot < ER_SLOTS.
 * slots: 0-7, 12 activations; 8, 10 offset sums; 9 decoded row; 11 attention scores; 13-16 the FFN
 * block's and 17-24 the attention block's intermediates; 25-28 the GEMM's packed activations.
 * (Fresh allocations of a prefill's megabytes cost page faults and zeroing on every layer: 7% of a
 * 512-token step.) */
#define ER_SLOTS 29
void *scratch(int slot, size_t n);

typedef void (*task_fn)(void *ctx, int i0, int i1);
/* run fn over [0, n) in chunks (whole multiples of min_chunk) with nt threads, the caller included */
void pool_run(task_fn fn, void *ctx, int n, int nt, int min_chunk);
int nthreads(void);
double now_s(void);

/* ------------------------------------------------------------------ run-time settings (dispatch.c) */

/* Every er_set_* knob in one place (the exported setter of each in brackets). */
typedef struct {
    int fused;         /* register-blocked kernels for B <= ER_FUSED_MAX_B, GEMM above [er_set_fused] */
    int gather16;      /* gather16 kernels for 2..8 rows of legacy types [er_set_tile] */
    int pass_rows;     /* B = 1 legacy types: weight rows per pass, 0 = the row kernels [er_set_fw0] */
    int pass_b2;       /* B = 2 on the same pass kernels rather than the repacked ones [er_set_fw0_b2] */
    int repack;        /* use registered repacked copies [er_set_tiles] */
    int repack_min_b;  /* repacked kernels from this many activation rows [er_set_tiles_min_b] */
    int64_t gemm_l2;   /* bytes of packed activations per GEMM tile [er_set_gemm_l2] */
    int pool;          /* the thread pool (off: every kernel on the calling thread) [er_set_pool] */
} er_tuning_t;
extern er_tuning_t er_tune;

/* ------------------------------------------------------------------ activations (act.c) */

typedef struct {
    int K;
    int8_t *q;    /* B*K int8 */
    float *l;     /* B*K/4 lane scales (block scale repeated per 4 values) */
    float *s;     /* B*K/16 scale * sum of 16 quants */
    int32_t *n;   /* B*K/4 : -128 * sum of 4 quants (VNNI offset) */
    float *s32;   /* B*K/32 scale * sum of 32 quants */
    int32_t *sq;  /* B*K/32 sum of 32 quants (gather16 and repacked kernels) */
    int g256;     /* per-32 format quantized with one scale per 256 (the K-quant kernels' rounding) */
    /* Q8_K-style (K-quant fused kernels): one scale per 256, sums per 16 */
    int8_t *kq;   /* B*K */
    float *kd;    /* B*K/256 */
    int16_t *kb;  /* B*K/16 */
} act_t;

/* buffers in the calling thread's scratch slots (nothing to free): 0 or ER_E_NOMEM */
int act_alloc(act_t *a, int B, int K, int want32, int wantk);
void act_quantize(act_t *a, const float *x, int B, int K);
const act_t *act_offset_variant(int off_shift, const act_t *A, int B, int K, act_t *A2, int slot);

/* ------------------------------------------------------------------ kernel families */

/* one weight row -> w (int8 K), wl (K/4 lane scales), mw (K/16 additive terms):
 * value[i] = w[i] * wl[i/4] + mw[i/16]; returns 1 when mw is used. The GEMM reads one lane scale
 * per gemm_group values and one additive term per 32 (mw[2j] == mw[2j+1]): a decoder must repeat them so. */
typedef int (*decode_fn)(const uint8_t *row, int K, int8_t *w, float *wl, float *mw);
/* a decoded row against nr <= 4 q8_0 activation rows b..b+nr-1: res[r] */
typedef void (*dot_decoded_fn)(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                               float *res);
/* a float-type row (F32/F16/BF16) against nr <= 4 float rows x (K apart): res[r] */
typedef void (*fdot_fn)(const uint8_t *row, int K, const float *x, int nr, float *res);
/* fused: one on-disk weight row decoded in registers, dotted with nr <= fused_nr activation rows */
typedef void (*fused_fn)(const uint8_t *row, int K, const act_t *A, int b, int nr, float *res);
/* pass1 (K-quants, B = 1): nw <= 4 weight rows rb apart per pass; out[v] */
typedef void (*pass1_fn)(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, float *out);
/* pass12 (legacy types, B = 1 or 2): nw <= 4 weight rows, nr activation rows; out[r * ldy + v] */
typedef void (*pass12_fn)(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, int nr, int64_t ldy,
                          float *out);
/* gather16: rows n0..n0+15 of the on-disk matrix, gathered and transposed per block, against
 * B <= 8 activation rows (q and l of A from row 0, sq their block sums): y[r * N + n0 + i] */
typedef void (*gather16_fn)(const uint8_t *W, int64_t rb, int N, int K, const act_t *A, const int32_t *sq, int B,
                            float *y, int n0);
/* repack: one 16-row tile T of the repacked copy (repack.c) against B activation rows, 8 a pass */
typedef void (*repack_fn)(const uint8_t *T, int K, const act_t *A, int B, float *y, int N, int n0);
/* builds the repacked copy of an N x K matrix (portable; repack.c) */
typedef void (*repack_make_fn)(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);

enum { ER_ACT_Q8_0 = 0, ER_ACT_Q8_K = 1 };

/* One quant type: its format facts (filled from a static table) and its kernels on one ISA. */
typedef struct {
    int id;             /* gguf.GGMLQuantizationType id */
    int block;          /* values per block; 0: not a type this library knows */
    int is_float;       /* F32 / F16 / BF16: float dot products, no activation quantization */
    int vec_dot_type;   /* ER_ACT_Q8_0 or ER_ACT_Q8_K: the activation format of the fused kernels */
    int off_shift;      /* fused kernels take weights as value + off + 128 (Q4_0: off 8, shift 4; Q5_0: 16,
                           shift 3): the activation offsets become n + (n >> off_shift); 0 = none */
    int gemm_group;     /* GEMM: values per float conversion (Q6_K's sub-blocks are 16 wide) */
    int repack_extra_b; /* repacked kernels from er_tune.repack_min_b + this many rows */
    int repack_unit_k;  /* repacked layout: values per unit (one unit = 16 rows x this many values) */
    int repack_unit_bytes;
    repack_make_fn repack_make;
    /* kernels on this table's ISA; NULL where it has none */
    decode_fn decode;
    fdot_fn fdot;
    fused_fn fused;
    int fused_nr;       /* activation rows per fused call */
    pass1_fn pass1;
    pass12_fn pass12;
    gather16_fn gather16;
    repack_fn repack;
} er_type_traits_t;

#define ER_NTYPES 40 /* type ids index the table directly (the on-disk ids are the ids) */

struct attn_ctx;
/* pack_t and its GEMM: arch/x86/gemm.c */
typedef int (*gemm_fn)(const er_type_traits_t *t, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A,
                       int B, float *y);
/* one (token, KV head, query heads [h0, h1)) of attention; 0 when this head size has no kernel */
typedef int (*attn_fn)(const struct attn_ctx *c, int t, int g, int h0, int h1, float *sc);
typedef void (*quant_row_fn)(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n);
typedef void (*quant_row_k_fn)(const float *x, int K, int8_t *q, float *d, int16_t *bsum);

typedef struct {
    int isa;
    quant_row_fn quantize_row_q8_0;
    quant_row_k_fn quantize_row_q8_K;
    dot_decoded_fn dot_decoded;
    gemm_fn gemm;       /* B > ER_FUSED_MAX_B; NULL: the decoded-row path */
    attn_fn attn;       /* NULL: the generic attention */
    er_type_traits_t type[ER_NTYPES];
} er_kernels_t;

/* the table of the running ISA (detected on first use) */
const er_kernels_t *er_kern_init(void);
extern const er_kernels_t *er_kern_cur;
static inline const er_kernels_t *er_kern(void) { return er_kern_cur ? er_kern_cur : er_kern_init(); }
/* a type's row, or NULL for an id this library does not know */
static inline const er_type_traits_t *er_traits(const er_kernels_t *k, int qt) {
    return qt >= 0 && qt < ER_NTYPES && k->type[qt].block ? &k->type[qt] : NULL;
}

/* fillers, in order: generic first, then each ISA up to the table's own (dispatch.c calls them) */
void er_fill_generic(er_kernels_t *k);
void er_fill_act_generic(er_kernels_t *k); /* act.c, called by er_fill_generic */
#ifdef ER_X86
void er_fill_avx2(er_kernels_t *k);
void er_fill_avx512(er_kernels_t *k);
void er_fill_gemm_avx512(er_kernels_t *k);
void er_fill_gather16_avx512(er_kernels_t *k); /* only with AVX512_BITALG */
void er_fill_repack_avx512(er_kernels_t *k);
#endif

/* ------------------------------------------------------------------ internal entry points */

int matmul_impl(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y);
int matmul_q_act(int qt, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B, float *y);
int matmul_multi(int nm, const int *qt, const void *const *W, const int64_t *rb, const int *N, int K, const float *x,
                 int B, float *const *y);
int get_rows_impl(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out);
/* whether the fused kernels take this type at batch B; fused_rows runs them over weight rows [n0, n1) */
int use_fused(const er_type_traits_t *t, int B);
void fused_rows(const er_type_traits_t *t, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B,
                float *y, int n0, int n1);
int par_worth(int64_t N, int K, int B);
void act_gate_range(const float *g, const float *u, float *out, int64_t i0, int64_t i1, int act);
int ffn_impl(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
             const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
             const float *post_norm, float *out);
int attn_block_impl(const float *x, int T, int D, const float *norm_w, float eps, int qt_q, const void *Wq,
                    int64_t rb_q, const float *bq, int qt_k, const void *Wk, int64_t rb_k, const float *bk, int qt_v,
                    const void *Wv, int64_t rb_v, const float *bv, int qt_o, const void *Wo, int64_t rb_o,
                    const float *q_norm, const float *k_norm, const float *post_norm, int H, int KVH, int hd,
                    int neox, float rope_base, float pos_scale, float attn_scale, int window, const int32_t *pos,
                    void *kcache, void *vcache, int kv_f16, const int64_t *write_slots, const int32_t *tok_seq,
                    const int64_t *read_slots, const int64_t *read_off, int max_ctx, float *out);
/* the repacked copy of W when one is registered for this shape (repack.c) */
const uint8_t *repack_find(const void *W, int qt, int N, int K, int64_t rb);

#endif
