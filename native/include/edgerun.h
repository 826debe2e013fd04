/*
 * edgerun native kernels: the public contract with the Python binding (edgerun/backends/native*).
 *
 * ER_ABI_VERSION changes whenever an exported signature or er_layer_t changes; the binding refuses a
 * library whose er_abi_version() differs from the number it was written for.  Every entry point that
 * can fail returns an er_status; er_status_str() names it for error messages. Internal headers
 * (native/common.h and the rest) are not part of the contract.
 */
#ifndef EDGERUN_H
#define EDGERUN_H

#define ER_ABI_VERSION 1

typedef enum {
    ER_OK = 0,
    ER_E_UNSUPPORTED = -1, /* quant type or operation this build has no kernel for */
    ER_E_NOMEM = -2,       /* an allocation failed */
    ER_E_SHAPE = -3,       /* a size is not a multiple of the type's block, or shapes disagree */
    ER_E_INVALID = -4,     /* a null pointer, negative size or out-of-range argument */
} er_status;

#include <stdint.h>

/* ---- version and status */
int er_abi_version(void);
const char *er_status_str(int status);

/* ---- matmul and row gather (qt: the gguf.GGMLQuantizationType id of W; W's rows are row_bytes
 * apart; activations x and outputs are float32, row-major) */
/* y[B,N] = x[B,K] @ W^T */
int er_matmul(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y);
/* out[T,K] = the dequantized rows ids[0..T) of W */
int er_get_rows(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out);
/* 1 when qt has kernels in this library */
int er_supports(int qt);

/* ---- blocks: out = x + down(act(gate(n)) * up(n)), n = rms_norm(x) * norm_w; act 0 = silu, 1 = gelu
 * (tanh). x, out: (B, D); gate/up: (F, D); down: (D, F) */
int er_ffn(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
           const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
           float *out);

/* One layer's constants for er_layers / er_step, built once per model by the binding. Every field
 * is 8 bytes wide, so the ctypes mirror needs no padding rules; the order is part of the ABI. */
typedef struct {
    const float *attn_norm, *bq, *bk, *bv, *q_norm, *k_norm, *post_attn_norm;
    const void *wq, *wk, *wv, *wo;
    int64_t qt_q, qt_k, qt_v, qt_o, rb_q, rb_k, rb_v, rb_o;
    int64_t n_heads, n_kv_heads, head_dim, neox, window;
    double rope_base, pos_scale, attn_scale;
    const float *ffn_norm, *post_ffn_norm;
    const void *wg, *wu, *wd;
    int64_t qt_g, qt_u, qt_d, rb_g, rb_u, rb_d, ffn_dim, act;
} er_layer_t;

int64_t er_layer_size(void); /* sizeof(er_layer_t), for the binding's check */

/* The layer stack of a CPU-only step for T tokens, x (T, D) updated in place. kc / vc: per layer,
 * the K and V caches (float, or IEEE half when kv_f16), slot s of layer i at kc[i] + s * KVH * hd.
 * pos[t]: token t's position; write_slots[t]: its cache slot; tok_seq[t]: its sequence s, whose
 * positions 0..n-1 are at read_slots[read_off[s] + j]; max_ctx: the longest sequence. */
int er_layers(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, float *x, int T, int D,
              float eps, const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq,
              const int64_t *read_slots, const int64_t *read_off, int max_ctx);
/* A whole CPU-only step: the embedding rows of tokens (times embed_scale), er_layers, the final
 * norm and the output head for the n_sel rows sel of the batch: logits (n_sel, n_vocab). */
int er_step(const er_layer_t *L, int n_layers, void *const *kc, void *const *vc, int kv_f16, int T, int D, float eps,
            const int32_t *pos, const int64_t *write_slots, const int32_t *tok_seq, const int64_t *read_slots,
            const int64_t *read_off, int max_ctx, int qt_emb, const void *emb, int64_t rb_emb, const int64_t *tokens,
            float embed_scale, const float *out_norm, int qt_out, const void *w_out, int64_t rb_out, int n_vocab,
            const int64_t *sel, int n_sel, float *logits);

/* ---- light ops (cannot fail) */
void er_rms_norm(const float *x, const float *w, float *out, int R, int D, float eps); /* w may be NULL */
/* x: (T, H, D) in place; rotates the first n_rot dims of each head. neox: pairs (i, i+n_rot/2), else (2i, 2i+1) */
void er_rope(float *x, const int32_t *pos, int T, int H, int D, int n_rot, float theta_base, int neox);
void er_softmax(float *x, int R, int D);
void er_act_gate(const float *g, const float *u, float *out, int64_t n, int act); /* act(g) * u */
void er_add(const float *a, const float *b, float *out, int64_t n);
void er_f32_to_f16(const float *x, uint16_t *y, int64_t n); /* round to nearest even, like numpy */

/* ---- repacked copies ("batch tiles"): a second layout of a matrix for the small-batch kernels,
 * registered by the address of the row-major matrix and used by er_matmul when present */
int64_t er_tiles_size(int qt, int N, int K); /* bytes; 0 when this type / shape / CPU gets none */
int er_tiles_make(int qt, const void *W, int64_t rb, int N, int K, void *out);
int er_tiles_add(const void *W, int qt, int N, int K, int64_t rb, const void *tiles);
int er_tiles_remove(const void *W);
int er_tiles_count(void);

/* ---- run-time ISA and settings (each setter returns the previous value) */
int er_isa(void);         /* 0 scalar, 1 AVX2, 2 AVX-512 VNNI */
int er_isa_max(void);
int er_set_isa(int isa);  /* clamped to er_isa_max(); < 0: the best; returns the ISA now in use */
void er_set_threads(int n); /* <= 0: one per online CPU */
int er_get_threads(void);
int er_set_pool(int on);
int er_set_fused(int on);
int er_set_tile(int on);         /* gather16 kernels */
int er_set_fw0(int nw);          /* B = 1 legacy types: weight rows per pass (0..4) */
int er_set_fw0_b2(int on);       /* B = 2 on the pass kernels */
int er_set_tiles(int on);        /* use registered repacked copies */
int er_set_tiles_min_b(int b);   /* repacked kernels from this many activation rows */
int64_t er_set_gemm_l2(int64_t bytes);
void er_pool_stats(long *out);   /* jobs, chunks done by workers, worker sleeps */
double er_api_seconds(void);     /* wall time inside the timed entry points */
int er_noop(int a);              /* returns a: the binding's call-overhead probe */

#endif
