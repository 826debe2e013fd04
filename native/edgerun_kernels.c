/*
 * edgerun native CPU kernels: quantized matmul (ggml block formats), row gather,
 * light ops (rms_norm, rope, softmax, gated activations, add) and a fused FFN.
 *
 * Matmul y[B,N] = x[B,K] @ W^T, activations quantized to int8 on the fly:
 *  - B <= 8 (decode): "fused" kernels decode weight blocks in registers and dot them with up to
 *    4 activation rows at once.  Legacy types (Q4_0/Q5_0/Q8_0) use per-32 activation scales
 *    (Q8_0 style) and dpbusd (AVX-512 VNNI) or maddubs (AVX2); K-quants (Q4_K/Q5_K/Q6_K) use
 *    Q8_K-style activations (one scale per 256, sums per 16) with maddubs + dpwssd/madd so the
 *    integer sub-block scales are applied in int32 and floats are touched once per 256 values.
 *  - B > 8 (prefill, AVX-512 VNNI): activations are repacked as [K/4][16 rows][4 bytes]; a
 *    broadcast of 4 decoded weight bytes x one 64-byte load = 16 rows x 4 MACs per dpbusd,
 *    tiled 4 weight rows x 32 activation rows.
 *  - everything else: a weight row is decoded once into int8 + per-4 lane scales (+ per-16
 *    additive mins) and dotted against every activation row (scalar / AVX2 / AVX-512 cores).
 * One build: ISA-specific functions carry target attributes and are chosen at run time with
 * __builtin_cpu_supports (EDGERUN_ISA=avx2|scalar or er_set_isa() force a lower level).
 * Threads: one persistent spin/condvar pool shared by every kernel; work is claimed in chunks
 * and the caller never waits for a worker that has not started (busy or oversubscribed cores).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "blocks.h"
#include "include/edgerun.h"

/* Batches up to this size use the register-blocked small-batch kernels; larger ones the GEMM. */
#ifndef ER_FUSED_MAX_B
#define ER_FUSED_MAX_B 16
/* activation rows per pass of the AVX-512 fused kernels (AVX2 ones: 4) */
#define ER_V512_NR 8
#endif


#if defined(__x86_64__) && !defined(ER_NO_X86)
#include <immintrin.h>
#define ER_X86 1
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_V512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")))
#endif

#define ER_API __attribute__((visibility("default")))
#define AI static inline __attribute__((always_inline))

ER_API int er_abi_version(void) { return ER_ABI_VERSION; }

ER_API const char *er_status_str(int status) {
    switch (status) {
    case ER_OK: return "ok";
    case ER_E_UNSUPPORTED: return "unsupported quant type or operation";
    case ER_E_NOMEM: return "out of memory";
    case ER_E_SHAPE: return "size not a multiple of the block size, or shapes disagree";
    case ER_E_INVALID: return "invalid argument";
    default: return "unknown native error";
    }
}

#define ISA_SCALAR 0
#define ISA_AVX2 1
#define ISA_AVX512VNNI 2

static int g_threads = 0;
static int g_isa = -1;
static int g_isa_max = -1;
static int g_fused = 1; /* use the fused register kernels for small batches */

/* ------------------------------------------------------------------ utils */

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

ER_API void er_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = f2h(x[i]);
}

AI float bf2f(uint16_t h) {
    union { uint32_t u; float f; } o;
    o.u = (uint32_t)h << 16;
    return o.f;
}

static void *amalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) & ~(size_t)63 : 64)) return NULL;
    return p;
}

/* per-thread grow-only scratch buffers (no malloc per call); slot < ER_SLOTS */
#ifndef ER_PF
#define ER_PF 1024
#endif
/* slots: 0-7, 12 activations; 8, 10 offset sums; 9 decoded row; 11 attention scores; 13-16 the FFN
 * block's and 17-24 the attention block's intermediates; 25-28 the GEMM's packed activations.
 * (Fresh allocations of a prefill's megabytes cost page faults and zeroing on every layer: 7% of a
 * 512-token step.) */
#define ER_SLOTS 29
static __thread void *t_scratch[ER_SLOTS];
static __thread size_t t_scratch_n[ER_SLOTS];

static void *scratch(int slot, size_t n) {
    if (n > t_scratch_n[slot]) {
        free(t_scratch[slot]);
        t_scratch_n[slot] = 0;
        t_scratch[slot] = amalloc(n + 256);
        if (t_scratch[slot]) t_scratch_n[slot] = n;
    }
    return t_scratch[slot];
}

static int g_bitalg = 0; /* AVX512_BITALG, for the tile16 kernels */
#ifdef ER_X86
static void q5_sel_init(void); /* tile16.h */
#endif
static int g_tile = 1;   /* tile16 kernels on (er_set_tile) */
static int g_fw0 = 4;    /* B = 1 Q4_0/Q5_0/Q8_0: rows per pass, 0 = one row per kernel call (er_set_fw0) */
static int g_tiles_min_b = 2; /* batch tiles (tiles.h) from this many activation rows (er_set_tiles_min_b) */
static int g_fw0_b2 = 1; /* B = 2 on the same pass kernels rather than the tiles (er_set_fw0_b2) */

static void detect_isa(void) {
    int isa = ISA_SCALAR;
#ifdef ER_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = ISA_AVX2;
    if (isa == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512dq"))
        isa = ISA_AVX512VNNI;
#endif
    g_isa_max = isa;
#ifdef ER_X86
    g_bitalg = isa == ISA_AVX512VNNI && __builtin_cpu_supports("avx512bitalg");
    if (g_bitalg) q5_sel_init();
#endif
    const char *e = getenv("EDGERUN_ISA");
    if (e) {
        if (!strcmp(e, "scalar")) isa = ISA_SCALAR;
        else if (!strcmp(e, "avx2") && isa >= ISA_AVX2) isa = ISA_AVX2;
    }
    g_isa = isa;
}


/* ------------------------------------------------------------ thread pool
 * A small persistent pool shared by all kernels.  Work is split into
 * chunks claimed with one atomic (generation << 32 | next chunk); the calling thread takes part,
 * and a call returns as soon as every chunk is done -- a worker that has not been scheduled yet
 * (busy desktop, oversubscribed cores) is simply not waited for, unlike a fork-join barrier.
 * Workers spin briefly after a job, then sleep on a condition variable. */

typedef void (*task_fn)(void *ctx, int i0, int i1);

#define ER_MAX_WORKERS 255
static struct {
    pthread_mutex_t mu;      /* guards sleeping / cv */
    pthread_cond_t cv;
    pthread_mutex_t run_mu;  /* one job at a time */
    int nworkers;
    _Atomic uint64_t state;  /* gen << 32 | next chunk */
    _Atomic uint32_t gen_pub;
    _Atomic int done;
    _Atomic int sleeping;
    task_fn fn;
    void *ctx;
    int n, chunk, nchunks, nactive;
    uint32_t gen;
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL,
       0, 0, 0, 0, 0};
static int g_use_pool = 1;
static _Atomic long g_pool_jobs, g_pool_worker_chunks, g_pool_sleeps;

AI void cpu_relax(void) {
#ifdef ER_X86
    _mm_pause();
#endif
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wall time spent inside the outermost public entry points (matmul, get_rows, ffn,
 * attn_block), so the Python side can measure its own and the binding's overhead. */
static _Thread_local int t_api_depth = 0;
static double g_api_seconds = 0.0;
#define API_TIMED(call)                                          \
    do {                                                         \
        const double _t0 = t_api_depth++ == 0 ? now_s() : 0.0;   \
        const int _rc = (call);                                  \
        if (--t_api_depth == 0) g_api_seconds += now_s() - _t0;  \
        return _rc;                                              \
    } while (0)
ER_API double er_api_seconds(void) { return g_api_seconds; }
ER_API int er_matmul(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y);

static void pool_work(uint32_t g, int worker) {
    const task_fn fn = P.fn;
    void *const ctx = P.ctx;
    const int n = P.n, chunk = P.chunk, nch = P.nchunks;
    for (;;) {
        uint64_t v = atomic_load_explicit(&P.state, memory_order_acquire);
        if ((uint32_t)(v >> 32) != g || (int)(uint32_t)v >= nch) return;
        if (!atomic_compare_exchange_weak_explicit(&P.state, &v, v + 1, memory_order_acq_rel, memory_order_relaxed))
            continue;
        const int i0 = (int)(uint32_t)v * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        fn(ctx, i0, i1);
        if (worker) atomic_fetch_add_explicit(&g_pool_worker_chunks, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

static void *pool_worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint32_t seen = atomic_load_explicit(&P.gen_pub, memory_order_acquire);
    for (;;) {
        uint32_t g;
        int spins = 0;
        const double t_spin = now_s();
        while ((g = atomic_load_explicit(&P.gen_pub, memory_order_acquire)) == seen) {
            /* spin ~2 ms after the last job (covers the caller's glue code between kernels), then sleep */
            if ((++spins & 255) || now_s() - t_spin < 2e-3) { cpu_relax(); continue; }
            pthread_mutex_lock(&P.mu);
            atomic_fetch_add(&P.sleeping, 1);
            atomic_fetch_add_explicit(&g_pool_sleeps, 1, memory_order_relaxed);
            while (atomic_load_explicit(&P.gen_pub, memory_order_acquire) == seen) pthread_cond_wait(&P.cv, &P.mu);
            atomic_fetch_sub(&P.sleeping, 1);
            pthread_mutex_unlock(&P.mu);
            spins = 0;
        }
        seen = g;
        if (id < P.nactive) pool_work(g, 1);
    }
    return NULL;
}

static void pool_atfork_child(void) {
    /* threads do not survive fork: start over in the child */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    P.mu = m;
    P.run_mu = m;
    P.cv = c;
    P.nworkers = 0;
    atomic_store(&P.sleeping, 0);
}

/* run fn over [0, n) with nt threads (the caller included) */
static void pool_run(task_fn fn, void *ctx, int n, int nt, int min_chunk) {
    if (nt > ER_MAX_WORKERS + 1) nt = ER_MAX_WORKERS + 1;
    if (!g_use_pool) nt = 1;
    if (nt <= 1 || n <= min_chunk || pthread_mutex_trylock(&P.run_mu)) {
        fn(ctx, 0, n);
        return;
    }
    static int atfork_done = 0;
    if (!atfork_done) { pthread_atfork(NULL, NULL, pool_atfork_child); atfork_done = 1; }
    while (P.nworkers < nt - 1) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, pool_worker, (void *)(intptr_t)P.nworkers)) { pthread_attr_destroy(&at); break; }
        pthread_attr_destroy(&at);
        P.nworkers++;
    }
    int chunk = (n + 8 * nt - 1) / (8 * nt);
    chunk = (chunk + min_chunk - 1) / min_chunk * min_chunk; /* whole tiles of min_chunk rows */
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.chunk = chunk;
    P.nchunks = (n + chunk - 1) / chunk;
    P.nactive = nt - 1;
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    const uint32_t g = ++P.gen;
    atomic_store_explicit(&P.state, (uint64_t)g << 32, memory_order_release);
    atomic_store(&P.gen_pub, g); /* seq_cst: ordered before the load of P.sleeping */
    if (atomic_load(&P.sleeping) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    atomic_fetch_add_explicit(&g_pool_jobs, 1, memory_order_relaxed);
    pool_work(g, 0);
    int spins = 0;
    while (atomic_load_explicit(&P.done, memory_order_acquire) < P.nchunks)
        if (++spins > 4000) { sched_yield(); spins = 0; } else cpu_relax();
    pthread_mutex_unlock(&P.run_mu);
}

/* jobs run on the pool, chunks done by workers, times a worker went to sleep */
ER_API void er_pool_stats(long *out) {
    out[0] = atomic_load(&g_pool_jobs);
    out[1] = atomic_load(&g_pool_worker_chunks);
    out[2] = atomic_load(&g_pool_sleeps);
}

ER_API int er_set_pool(int on) { int old = g_use_pool; g_use_pool = on != 0; return old; }

static int nthreads(void) {
    if (g_threads <= 0) {
        g_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (g_threads < 1) g_threads = 1;
    }
    return g_threads;
}

ER_API int er_isa(void) { if (g_isa < 0) detect_isa(); return g_isa; }
ER_API int er_isa_max(void) { if (g_isa < 0) detect_isa(); return g_isa_max; }
ER_API int er_set_isa(int isa) {
    if (g_isa < 0) detect_isa();
    if (isa < 0 || isa > g_isa_max) isa = g_isa_max;
    g_isa = isa;
    return g_isa;
}
ER_API int er_set_fused(int on) { int old = g_fused; g_fused = on != 0; return old; }
ER_API void er_set_threads(int n) { g_threads = n > 0 ? n : 0; nthreads(); }
ER_API int er_get_threads(void) { return nthreads(); }
ER_API int er_noop(int a) { return a; }

static int is_float_type(int qt) { return qt == ER_F32 || qt == ER_F16 || qt == ER_BF16; }

static int block_size(int qt) {
    switch (qt) {
    case ER_F32: case ER_F16: case ER_BF16: return 1;
    case ER_Q4_0: case ER_Q4_1: case ER_Q5_0: case ER_Q5_1: case ER_Q8_0: return 32;
    case ER_Q4_K: case ER_Q5_K: case ER_Q6_K: return 256;
    default: return 0;
    }
}

ER_API int er_supports(int qt) { return block_size(qt) > 0; }

/* ------------------------------------------------- activation quantization */

typedef struct {
    int K;
    int8_t *q;    /* B*K int8 */
    float *l;     /* B*K/4 lane scales (block scale repeated per 4 values) */
    float *s;     /* B*K/16 scale * sum of 16 quants */
    int32_t *n;   /* B*K/4 : -128 * sum of 4 quants (VNNI offset) */
    float *s32;   /* B*K/32 scale * sum of 32 quants */
    int32_t *sq;  /* B*K/32 sum of 32 quants (tile16 kernels) */
    int g256;     /* per-32 format quantized with one scale per 256 (the K-quant kernels' rounding) */
    /* Q8_K-style (K-quant fused kernels): one scale per 256, sums per 16 */
    int8_t *kq;   /* B*K */
    float *kd;    /* B*K/256 */
    int16_t *kb;  /* B*K/16 */
} act_t;

/* one block of 32 at the scale of amax (its own, or its 256-group's) */
AI void quant_block32(const float *x, float amax, int8_t *q, float *l, float *s, int32_t *n) {
    const float d = amax / 127.f;
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    int sum16[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
        float v = x[i] * id;
        int qi = (int)(v + (v >= 0.f ? 0.5f : -0.5f));
        q[i] = (int8_t)qi;
        sum16[i >> 4] += qi;
    }
    for (int i = 0; i < 8; i++) {
        l[i] = d;
        n[i] = -128 * (q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
    }
    s[0] = d * (float)sum16[0];
    s[1] = d * (float)sum16[1];
}

static float amax_of(const float *x, int n) {
    float amax = 0.f;
    for (int i = 0; i < n; i++) { float a = fabsf(x[i]); amax = amax > a ? amax : a; }
    return amax;
}

/* group: 32, or 256 (one scale per 256 values, written per block of 32) */
static void quant_row_scalar(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n) {
    float amax = 0.f;
    for (int b = 0; b < K / 32; b++) {
        if ((32 * b) % group == 0) amax = amax_of(x + 32 * b, K - 32 * b < group ? K - 32 * b : group);
        quant_block32(x + 32 * b, amax, q + 32 * b, l + 8 * b, s + 2 * b, n + 8 * b);
    }
}

#ifdef ER_X86
T_V512 static void quant_row_v512(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n) {
    const __m512 sgn = _mm512_set1_ps(-0.0f);
    const __m512 half = _mm512_set1_ps(0.5f);
    float amax = 0.f;
    for (int b = 0; b < K / 32; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        if ((32 * b) % group == 0) {
            const int end = 32 * b + group < K ? 32 * b + group : K;
            __m512 a = _mm512_setzero_ps();
            for (int i = 32 * b; i < end; i += 16) a = _mm512_max_ps(a, _mm512_andnot_ps(sgn, _mm512_loadu_ps(x + i)));
            amax = _mm512_reduce_max_ps(a);
        }
        const float d = amax / 127.f;
        const float id = amax > 0.f ? 127.f / amax : 0.f;
        __m512 vid = _mm512_set1_ps(id);
        x0 = _mm512_mul_ps(x0, vid);
        x1 = _mm512_mul_ps(x1, vid);
        /* round half away from zero */
        x0 = _mm512_add_ps(x0, _mm512_or_ps(half, _mm512_and_ps(sgn, x0)));
        x1 = _mm512_add_ps(x1, _mm512_or_ps(half, _mm512_and_ps(sgn, x1)));
        __m512i i0 = _mm512_cvttps_epi32(x0), i1 = _mm512_cvttps_epi32(x1);
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtepi32_epi8(i1));
        s[2 * b] = d * (float)_mm512_reduce_add_epi32(i0);
        s[2 * b + 1] = d * (float)_mm512_reduce_add_epi32(i1);
        _mm256_storeu_ps(l + 8 * b, _mm256_set1_ps(d));
        /* sums of 4 consecutive values: lanes 4i..4i+3 of i0 then i1 */
        __m512i idx_a = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
        __m512i t0 = _mm512_permutex2var_epi32(i0, idx_a, i1);
        __m512i t1 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(1)), i1);
        __m512i t2 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(2)), i1);
        __m512i t3 = _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx_a, _mm512_set1_epi32(3)), i1);
        __m512i sum4 = _mm512_add_epi32(_mm512_add_epi32(t0, t1), _mm512_add_epi32(t2, t3));
        sum4 = _mm512_mullo_epi32(sum4, _mm512_set1_epi32(-128));
        _mm256_storeu_si256((__m256i *)(n + 8 * b), _mm512_castsi512_si256(sum4));
    }
}
#endif

static void quant_row(const float *x, int K, int group, int8_t *q, float *l, float *s, int32_t *n) {
#ifdef ER_X86
    if (g_isa >= ISA_AVX512VNNI) { quant_row_v512(x, K, group, q, l, s, n); return; }
#endif
    quant_row_scalar(x, K, group, q, l, s, n);
}

static int act_alloc(act_t *a, int B, int K, int want32, int wantk) {
    memset(a, 0, sizeof(*a));
    a->K = K;
    if (want32) {
        a->q = scratch(0, (size_t)B * K);
        a->l = scratch(1, (size_t)B * K);         /* K/4 floats */
        a->s = scratch(2, (size_t)B * (K / 4));   /* K/16 floats */
        a->n = scratch(3, (size_t)B * K);         /* K/4 int32 */
        a->s32 = scratch(4, (size_t)B * (K / 8)); /* K/32 floats */
        a->sq = scratch(12, (size_t)B * (K / 8)); /* K/32 int32 */
        if (!a->q || !a->l || !a->s || !a->n || !a->s32 || !a->sq) return -1;
    }
    if (wantk) {
        a->kq = scratch(5, (size_t)B * K);
        a->kd = scratch(6, (size_t)B * (K / 64) + 4); /* K/256 floats */
        a->kb = scratch(7, (size_t)B * (K / 8));      /* K/16 int16 */
        if (!a->kq || !a->kd || !a->kb) return -1;
    }
    return 0;
}

/* activation buffers live in the calling thread's scratch slots */
static void act_free(act_t *a) { (void)a; }

#ifdef ER_X86
T_V512 static void quant_row_k_v512(const float *x, int K, int8_t *q, float *d, int16_t *bsum) {
    const __m512 sgn = _mm512_set1_ps(-0.0f), half = _mm512_set1_ps(0.5f);
    for (int i = 0; i < K / 256; i++) {
        const float *xb = x + 256 * i;
        __m512 a = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) a = _mm512_max_ps(a, _mm512_andnot_ps(sgn, _mm512_loadu_ps(xb + 16 * j)));
        const float amax = _mm512_reduce_max_ps(a);
        d[i] = amax / 127.f;
        const __m512 vid = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        for (int j = 0; j < 16; j++) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + 16 * j), vid);
            v = _mm512_add_ps(v, _mm512_or_ps(half, _mm512_and_ps(sgn, v)));
            const __m512i iv = _mm512_cvttps_epi32(v);
            _mm_storeu_si128((__m128i *)(q + 256 * i + 16 * j), _mm512_cvtepi32_epi8(iv));
            bsum[16 * i + j] = (int16_t)_mm512_reduce_add_epi32(iv);
        }
    }
}
#endif

static void quant_row_k_scalar(const float *x, int K, int8_t *q, float *d, int16_t *bsum) {
    for (int i = 0; i < K / 256; i++) {
        const float *xb = x + 256 * i;
        float amax = 0.f;
        for (int j = 0; j < 256; j++) { float v = fabsf(xb[j]); amax = amax > v ? amax : v; }
        d[i] = amax / 127.f;
        const float id = amax > 0.f ? 127.f / amax : 0.f;
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; j++) {
                float v = xb[j] * id;
                int qi = (int)(v + (v >= 0.f ? 0.5f : -0.5f));
                q[256 * i + j] = (int8_t)qi;
                sum += qi;
            }
            bsum[16 * i + g] = (int16_t)sum;
        }
    }
}

static void act_quantize(act_t *a, const float *x, int B, int K) {
    if (a->q) {
        for (int b = 0; b < B; b++)
            quant_row(x + (size_t)b * K, K, a->g256 && K % 256 == 0 ? 256 : 32, a->q + (size_t)b * K,
                      a->l + (size_t)b * K / 4,
                      a->s + (size_t)b * K / 16, a->n + (size_t)b * K / 4);
        for (size_t i = 0; i < (size_t)B * K / 32; i++) {
            a->s32[i] = a->s[2 * i] + a->s[2 * i + 1];
            int32_t t = 0;
            for (int j = 0; j < 8; j++) t += a->n[8 * i + j];
            a->sq[i] = -t / 128;
        }
    }
    if (a->kq) {
        for (int b = 0; b < B; b++) {
#ifdef ER_X86
            if (g_isa >= ISA_AVX512VNNI) {
                quant_row_k_v512(x + (size_t)b * K, K, a->kq + (size_t)b * K, a->kd + (size_t)b * (K / 256),
                                 a->kb + (size_t)b * (K / 16));
                continue;
            }
#endif
            quant_row_k_scalar(x + (size_t)b * K, K, a->kq + (size_t)b * K, a->kd + (size_t)b * (K / 256),
                               a->kb + (size_t)b * (K / 16));
        }
    }
}

/* ------------------------------------------------------- weight decoding */
/* decode one row into w (int8 K), wl (K/4 lane scales), mw (K/16 additive terms).
 * value[i] = w[i] * wl[i/4] + mw[i/16]; returns 1 when mw is used. */

AI void fill8(float *p, float v) { for (int i = 0; i < 8; i++) p[i] = v; }

AI void get_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

AI int decode_generic(int qt, const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    switch (qt) {
    case ER_Q4_0: {
        const block_q4_0 *bk = (const block_q4_0 *)row;
        for (int i = 0; i < K / 32; i++) {
            for (int j = 0; j < 16; j++) {
                w[32 * i + j] = (int8_t)((bk[i].qs[j] & 15) - 8);
                w[32 * i + j + 16] = (int8_t)((bk[i].qs[j] >> 4) - 8);
            }
            fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
        }
        return 0;
    }
    case ER_Q4_1: {
        const block_q4_1 *bk = (const block_q4_1 *)row;
        for (int i = 0; i < K / 32; i++) {
            for (int j = 0; j < 16; j++) {
                w[32 * i + j] = (int8_t)(bk[i].qs[j] & 15);
                w[32 * i + j + 16] = (int8_t)(bk[i].qs[j] >> 4);
            }
            fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
            mw[2 * i] = mw[2 * i + 1] = h2f(rd16(&bk[i].m));
        }
        return 1;
    }
    case ER_Q5_0: {
        const block_q5_0 *bk = (const block_q5_0 *)row;
        for (int i = 0; i < K / 32; i++) {
            uint32_t qh;
            memcpy(&qh, bk[i].qh, 4);
            for (int j = 0; j < 16; j++) {
                w[32 * i + j] = (int8_t)(((bk[i].qs[j] & 15) | (((qh >> j) & 1) << 4)) - 16);
                w[32 * i + j + 16] = (int8_t)(((bk[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
            }
            fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
        }
        return 0;
    }
    case ER_Q5_1: {
        const block_q5_1 *bk = (const block_q5_1 *)row;
        for (int i = 0; i < K / 32; i++) {
            uint32_t qh;
            memcpy(&qh, bk[i].qh, 4);
            for (int j = 0; j < 16; j++) {
                w[32 * i + j] = (int8_t)((bk[i].qs[j] & 15) | (((qh >> j) & 1) << 4));
                w[32 * i + j + 16] = (int8_t)((bk[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
            }
            fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
            mw[2 * i] = mw[2 * i + 1] = h2f(rd16(&bk[i].m));
        }
        return 1;
    }
    case ER_Q8_0: {
        const block_q8_0 *bk = (const block_q8_0 *)row;
        for (int i = 0; i < K / 32; i++) {
            memcpy(w + 32 * i, bk[i].qs, 32);
            fill8(wl + 8 * i, h2f(rd16(&bk[i].d)));
        }
        return 0;
    }
    case ER_Q4_K: {
        const block_q4_K *bk = (const block_q4_K *)row;
        for (int i = 0; i < K / 256; i++) {
            const float d = h2f(rd16(&bk[i].d)), dmin = h2f(rd16(&bk[i].dmin));
            for (int j = 0; j < 8; j++) {
                int sc, m;
                get_scale_min_k4(j, bk[i].scales, &sc, &m);
                const uint8_t *qs = bk[i].qs + 32 * (j >> 1);
                const int sh = 4 * (j & 1);
                int8_t *o = w + 256 * i + 32 * j;
                for (int l = 0; l < 32; l++) o[l] = (int8_t)((qs[l] >> sh) & 15);
                fill8(wl + 64 * i + 8 * j, d * (float)sc);
                mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
            }
        }
        return 1;
    }
    case ER_Q5_K: {
        const block_q5_K *bk = (const block_q5_K *)row;
        for (int i = 0; i < K / 256; i++) {
            const float d = h2f(rd16(&bk[i].d)), dmin = h2f(rd16(&bk[i].dmin));
            for (int j = 0; j < 8; j++) {
                int sc, m;
                get_scale_min_k4(j, bk[i].scales, &sc, &m);
                const uint8_t *qs = bk[i].qs + 32 * (j >> 1);
                const int sh = 4 * (j & 1);
                int8_t *o = w + 256 * i + 32 * j;
                for (int l = 0; l < 32; l++)
                    o[l] = (int8_t)(((qs[l] >> sh) & 15) | (((bk[i].qh[l] >> j) & 1) << 4));
                fill8(wl + 64 * i + 8 * j, d * (float)sc);
                mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
            }
        }
        return 1;
    }
    case ER_Q6_K: {
        const block_q6_K *bk = (const block_q6_K *)row;
        for (int i = 0; i < K / 256; i++) {
            const float d = h2f(rd16(&bk[i].d));
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = bk[i].ql + 64 * h, *qh = bk[i].qh + 32 * h;
                int8_t *o = w + 256 * i + 128 * h;
                for (int l = 0; l < 32; l++) {
                    o[l] = (int8_t)(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
                    o[l + 32] = (int8_t)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
                    o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                    o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                }
            }
            for (int g = 0; g < 16; g++) {
                const float v = d * (float)bk[i].scales[g];
                float *p = wl + 64 * i + 4 * g;
                p[0] = p[1] = p[2] = p[3] = v;
            }
        }
        return 0;
    }
    default:
        return -1;
    }
}

typedef int (*decode_fn)(int, const uint8_t *, int, int8_t *, float *, float *);

static int decode_scalar(int qt, const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    return decode_generic(qt, row, K, w, wl, mw);
}

#ifdef ER_X86
/* hand-vectorized decoders for the hot formats (AVX2; also used by the AVX-512 path) */
T_AVX2 AI __m256i unpack_nibbles16(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* 32 bits -> 32 bytes (0 or 0xFF) mask, bit j -> byte j */
T_AVX2 AI __m256i bits_to_bytes(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bm = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bm), bm);
}

T_AVX2 static int decode_avx2(int qt, const uint8_t *row, int K, int8_t *w, float *wl, float *mw) {
    switch (qt) {
    case ER_Q4_0: {
        const block_q4_0 *bk = (const block_q4_0 *)row;
        const __m256i off = _mm256_set1_epi8(8);
        for (int i = 0; i < K / 32; i++) {
            __m256i v = _mm256_sub_epi8(unpack_nibbles16(bk[i].qs), off);
            _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
            _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
        }
        return 0;
    }
    case ER_Q5_0: {
        const block_q5_0 *bk = (const block_q5_0 *)row;
        const __m256i off = _mm256_set1_epi8(16);
        for (int i = 0; i < K / 32; i++) {
            uint32_t qh;
            memcpy(&qh, bk[i].qh, 4);
            __m256i hb = _mm256_and_si256(bits_to_bytes(qh), off);
            __m256i v = _mm256_sub_epi8(_mm256_or_si256(unpack_nibbles16(bk[i].qs), hb), off);
            _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
            _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
        }
        return 0;
    }
    case ER_Q4_1: {
        const block_q4_1 *bk = (const block_q4_1 *)row;
        for (int i = 0; i < K / 32; i++) {
            _mm256_storeu_si256((__m256i *)(w + 32 * i), unpack_nibbles16(bk[i].qs));
            _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
            mw[2 * i] = mw[2 * i + 1] = _cvtsh_ss(rd16(&bk[i].m));
        }
        return 1;
    }
    case ER_Q5_1: {
        const block_q5_1 *bk = (const block_q5_1 *)row;
        const __m256i h16 = _mm256_set1_epi8(16);
        for (int i = 0; i < K / 32; i++) {
            uint32_t qh;
            memcpy(&qh, bk[i].qh, 4);
            __m256i v = _mm256_or_si256(unpack_nibbles16(bk[i].qs), _mm256_and_si256(bits_to_bytes(qh), h16));
            _mm256_storeu_si256((__m256i *)(w + 32 * i), v);
            _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
            mw[2 * i] = mw[2 * i + 1] = _cvtsh_ss(rd16(&bk[i].m));
        }
        return 1;
    }
    case ER_Q8_0: {
        const block_q8_0 *bk = (const block_q8_0 *)row;
        for (int i = 0; i < K / 32; i++) {
            _mm256_storeu_si256((__m256i *)(w + 32 * i), _mm256_loadu_si256((const __m256i *)bk[i].qs));
            _mm256_storeu_ps(wl + 8 * i, _mm256_set1_ps(_cvtsh_ss(rd16(&bk[i].d))));
        }
        return 0;
    }
    case ER_Q4_K: {
        const block_q4_K *bk = (const block_q4_K *)row;
        const __m256i m4 = _mm256_set1_epi8(15);
        for (int i = 0; i < K / 256; i++) {
            const float d = _cvtsh_ss(rd16(&bk[i].d)), dmin = _cvtsh_ss(rd16(&bk[i].dmin));
            const uint8_t *sc = bk[i].scales;
            for (int c = 0; c < 4; c++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(bk[i].qs + 32 * c));
                _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c), _mm256_and_si256(q, m4));
                _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c + 32),
                                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            }
            for (int j = 0; j < 8; j++) {
                int s, m;
                get_scale_min_k4(j, sc, &s, &m);
                _mm256_storeu_ps(wl + 64 * i + 8 * j, _mm256_set1_ps(d * (float)s));
                mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
            }
        }
        return 1;
    }
    case ER_Q5_K: {
        const block_q5_K *bk = (const block_q5_K *)row;
        const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
        for (int i = 0; i < K / 256; i++) {
            const float d = _cvtsh_ss(rd16(&bk[i].d)), dmin = _cvtsh_ss(rd16(&bk[i].dmin));
            const uint8_t *sc = bk[i].scales;
            const __m256i qh = _mm256_loadu_si256((const __m256i *)bk[i].qh);
            for (int c = 0; c < 4; c++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(bk[i].qs + 32 * c));
                __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
                __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
                __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
                __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_slli_epi16(h1, 4));
                _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c), lo);
                _mm256_storeu_si256((__m256i *)(w + 256 * i + 64 * c + 32), hi);
            }
            for (int j = 0; j < 8; j++) {
                int s, m;
                get_scale_min_k4(j, sc, &s, &m);
                _mm256_storeu_ps(wl + 64 * i + 8 * j, _mm256_set1_ps(d * (float)s));
                mw[16 * i + 2 * j] = mw[16 * i + 2 * j + 1] = -dmin * (float)m;
            }
        }
        return 1;
    }
    case ER_Q6_K: {
        const block_q6_K *bk = (const block_q6_K *)row;
        const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
        for (int i = 0; i < K / 256; i++) {
            const float d = _cvtsh_ss(rd16(&bk[i].d));
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = bk[i].ql + 64 * h;
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h));
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                int8_t *o = w + 256 * i + 128 * h;
                __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
                __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
                __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
                __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
                _mm256_storeu_si256((__m256i *)o, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off));
                _mm256_storeu_si256((__m256i *)(o + 32),
                                    _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off));
                _mm256_storeu_si256((__m256i *)(o + 64),
                                    _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off));
                _mm256_storeu_si256((__m256i *)(o + 96),
                                    _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off));
            }
            /* lane scales: d * scales[g] repeated 4x */
            __m128i s8 = _mm_loadu_si128((const __m128i *)bk[i].scales);
            __m256 sf0 = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8)));
            __m256 sf1 = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s8, 8))));
            float tmp[16];
            _mm256_storeu_ps(tmp, sf0);
            _mm256_storeu_ps(tmp + 8, sf1);
            for (int g = 0; g < 16; g++) _mm_storeu_ps(wl + 64 * i + 4 * g, _mm_set1_ps(tmp[g]));
        }
        return 0;
    }
    default:
        return decode_generic(qt, row, K, w, wl, mw);
    }
}
#endif

typedef void (*fused_fn)(const uint8_t *, int, const act_t *, int, int, float *);

/* ---------------------------------------------------------- dot cores */
/* res[r] = sum_i value[i] * xdeq[b+r][i] for r < NR */

AI void core_scalar_nr(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int NR,
                       float *res) {
    for (int r = 0; r < NR; r++) {
        const int8_t *q = A->q + (size_t)(b + r) * K;
        const float *xl = A->l + (size_t)(b + r) * K / 4;
        float acc = 0.f;
        for (int i = 0; i < K / 4; i++) {
            int p = w[4 * i] * q[4 * i] + w[4 * i + 1] * q[4 * i + 1] + w[4 * i + 2] * q[4 * i + 2] +
                    w[4 * i + 3] * q[4 * i + 3];
            acc += (float)p * wl[i] * xl[i];
        }
        if (mw) {
            const float *xs = A->s + (size_t)(b + r) * K / 16;
            for (int g = 0; g < K / 16; g++) acc += mw[g] * xs[g];
        }
        res[r] = acc;
    }
}

static void core_scalar(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                        float *res) {
    core_scalar_nr(w, wl, mw, K, A, b, nr, res);
}

#ifdef ER_X86
T_AVX2 AI float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T_AVX2 AI void core_avx2_nr(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int NR,
                            float *res) {
    __m256 acc[4];
    const int8_t *q[4];
    const float *xl[4];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < NR; r++) {
        acc[r] = _mm256_setzero_ps();
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
    }
    __m256 acc2[4];
    for (int r = 0; r < NR; r++) acc2[r] = _mm256_setzero_ps();
#define AVX2_CHUNK(ACC, c_)                                                                                     \
    {                                                                                                           \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + (c_)));                                     \
        const __m256i aw = _mm256_sign_epi8(wv, wv);                                                            \
        const __m256 s = _mm256_loadu_ps(wl + (c_) / 4);                                                        \
        for (int r = 0; r < NR; r++) {                                                                          \
            __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q[r] + (c_))), wv);               \
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, a), ones);                                   \
            ACC[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(s, _mm256_loadu_ps(xl[r] + (c_) / 4)), ACC[r]); \
        }                                                                                                       \
    }
    int c = 0;
    for (; c + 64 <= K; c += 64) {
        AVX2_CHUNK(acc, c);
        AVX2_CHUNK(acc2, c + 32);
    }
    if (c < K) AVX2_CHUNK(acc, c);
#undef AVX2_CHUNK
    for (int r = 0; r < NR; r++) acc[r] = _mm256_add_ps(acc[r], acc2[r]);
    if (mw) {
        const int G = K / 16;
        for (int r = 0; r < NR; r++) {
            const float *xs = A->s + (size_t)(b + r) * G;
            int g = 0;
            for (; g + 8 <= G; g += 8)
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(mw + g), _mm256_loadu_ps(xs + g), acc[r]);
            float t = 0.f;
            for (; g < G; g++) t += mw[g] * xs[g];
            res[r] = hsum256(acc[r]) + t;
        }
    } else {
        for (int r = 0; r < NR; r++) res[r] = hsum256(acc[r]);
    }
}

T_AVX2 static void core_avx2(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                             float *res) {
    switch (nr) {
    case 1: core_avx2_nr(w, wl, mw, K, A, b, 1, res); break;
    case 2: core_avx2_nr(w, wl, mw, K, A, b, 2, res); break;
    case 3: core_avx2_nr(w, wl, mw, K, A, b, 3, res); break;
    default: core_avx2_nr(w, wl, mw, K, A, b, 4, res); break;
    }
}

T_V512 AI void core_v512_nr(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int NR,
                            float *res) {
    __m512 acc[4];
    const int8_t *q[4];
    const float *xl[4];
    const int32_t *xn[4];
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    for (int r = 0; r < NR; r++) {
        acc[r] = _mm512_setzero_ps();
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
        xn[r] = A->n + (size_t)(b + r) * K / 4;
    }
    __m512 acc2[4];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
#define V512_CHUNK(ACC, c_)                                                                                     \
    {                                                                                                           \
        const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(w + (c_)), x80);                                  \
        const __m512 s = _mm512_loadu_ps(wl + (c_) / 4);                                                        \
        for (int r = 0; r < NR; r++) {                                                                          \
            __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (c_) / 4), u, _mm512_loadu_si512(q[r] + (c_))); \
            ACC[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(s, _mm512_loadu_ps(xl[r] + (c_) / 4)), ACC[r]); \
        }                                                                                                       \
    }
    int c = 0;
    for (; c + 128 <= K; c += 128) {
        V512_CHUNK(acc, c);
        V512_CHUNK(acc2, c + 64);
    }
    for (; c + 64 <= K; c += 64) V512_CHUNK(acc, c);
#undef V512_CHUNK
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    if (c < K) { /* 32-value tail */
        const __mmask64 m = 0xFFFFFFFFull;
        const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + c), x80);
        const __m512 s = _mm512_maskz_loadu_ps(0xFF, wl + c / 4);
        for (int r = 0; r < NR; r++) {
            __m512i p = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(0xFF, xn[r] + c / 4), u,
                                            _mm512_maskz_loadu_epi8(m, q[r] + c));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(s, _mm512_maskz_loadu_ps(0xFF, xl[r] + c / 4)),
                                     acc[r]);
        }
    }
    if (mw) {
        const int G = K / 16;
        for (int r = 0; r < NR; r++) {
            const float *xs = A->s + (size_t)(b + r) * G;
            int g = 0;
            for (; g + 16 <= G; g += 16)
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(mw + g), _mm512_loadu_ps(xs + g), acc[r]);
            if (g < G) {
                const __mmask16 m = (__mmask16)((1u << (G - g)) - 1);
                acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, mw + g), _mm512_maskz_loadu_ps(m, xs + g), acc[r]);
            }
        }
    }
    for (int r = 0; r < NR; r++) res[r] = _mm512_reduce_add_ps(acc[r]);
}

T_V512 static void core_v512(const int8_t *w, const float *wl, const float *mw, int K, const act_t *A, int b, int nr,
                             float *res) {
    switch (nr) {
    case 1: core_v512_nr(w, wl, mw, K, A, b, 1, res); break;
    case 2: core_v512_nr(w, wl, mw, K, A, b, 2, res); break;
    case 3: core_v512_nr(w, wl, mw, K, A, b, 3, res); break;
    default: core_v512_nr(w, wl, mw, K, A, b, 4, res); break;
    }
}

/* ---- fused AVX-512 VNNI kernels: decode blocks in registers, dot with up to 4 activation rows ---- */


#define FZ_SETUP()                                                      \
    __m512 acc[ER_V512_NR];                                                      \
    const int8_t *q[ER_V512_NR];                                                 \
    const float *xl[ER_V512_NR];                                                 \
    const int32_t *xn[ER_V512_NR];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        acc[r] = _mm512_setzero_ps();                                   \
        q[r] = A->q + (size_t)(b + r) * K;                              \
        xl[r] = A->l + (size_t)(b + r) * K / 4;                         \
        xn[r] = A->n + (size_t)(b + r) * K / 4;                         \
    }

/* u: 64 unsigned bytes (value + 128), s: 16 lane weight scales, e: element offset */
#define FZ_ACC(u, s, e)                                                                                   \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (e) / 4), (u),                        \
                                         _mm512_loadu_si512(q[r] + (e)));                                 \
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_), _mm512_mul_ps((s), _mm512_loadu_ps(xl[r] + (e) / 4)), \
                                 acc[r]);                                                                 \
    }

/* same for a 32-value tail: only the low 32 bytes / 8 lanes are valid */
#define FZ_ACC32(u, s, e)                                                                                 \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(0xFF, xn[r] + (e) / 4), (u),            \
                                         _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q[r] + (e)));             \
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_),                                                  \
                                 _mm512_mul_ps((s), _mm512_maskz_loadu_ps(0xFF, xl[r] + (e) / 4)), acc[r]); \
    }

#define FZ_FINISH()                                                     \
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(acc[r]);

T_V512 AI __m512 scale2(uint16_t d0, uint16_t d1) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16((short)d1), _mm_set1_epi16((short)d0)));
}

/* two 16-byte nibble blocks -> 64 bytes: b0 lo, b0 hi, b1 lo, b1 hi */
T_V512 AI __m512i nib2(const uint8_t *q0, const uint8_t *q1) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)q0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q0), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q1), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)q1), 3);
    const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                         0x0004000400040004LL, 0x0004000400040004LL);
    return _mm512_and_si512(_mm512_srlv_epi16(v, sh), _mm512_set1_epi8(15));
}


#define FZ_ACCX(ACC, u, s, e)                                                                             \
    for (int r = 0; r < NR; r++) {                                                                        \
        __m512i p_ = _mm512_dpbusd_epi32(_mm512_loadu_si512(xn[r] + (e) / 4), (u),                        \
                                         _mm512_loadu_si512(q[r] + (e)));                                 \
        ACC[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_), _mm512_mul_ps((s), _mm512_loadu_ps(xl[r] + (e) / 4)), \
                                 ACC[r]);                                                                 \
    }

AI uint64_t bytemask(int n) { return n >= 64 ? ~0ull : ((1ull << n) - 1); }

/* word-permutation tables (vpermw) for two consecutive legacy blocks loaded into one zmm */
static const uint16_t IDX_Q4_0_Q[32] = {1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                                        10, 11, 12, 13, 14, 15, 16, 17, 10, 11, 12, 13, 14, 15, 16, 17};
static const uint16_t IDX_Q4_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9};
static const uint16_t IDX_Q5_0_Q[32] = {3, 4, 5, 6, 7, 8, 9, 10, 3, 4, 5, 6, 7, 8, 9, 10,
                                        14, 15, 16, 17, 18, 19, 20, 21, 14, 15, 16, 17, 18, 19, 20, 21};
static const uint16_t IDX_Q5_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 11, 11, 11, 11, 11, 11, 11, 11};
static const uint16_t IDX_Q8_0_S[32] = {0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 17, 17, 17};

T_V512 AI __m512 halfscales(__m512i idx, __m512i v) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, v)));
}

/* decoding Q4_0 / Q5_0 blocks two at a time: u = q | 0x80 = q + 128 (the activation offsets in
 * A->n already hold -(128 + 8|16) * sum), with Q5_0's fifth bits added as 16 */
typedef struct {
    __m512i iq, is, sh, m0f, h16, x80;
    int five, bs;
    uint64_t m2, m1;
} q45_dec_t;

T_V512 AI q45_dec_t q45_dec(int five) {
    const q45_dec_t d = {_mm512_loadu_si512(five ? IDX_Q5_0_Q : IDX_Q4_0_Q),
                         _mm512_loadu_si512(five ? IDX_Q5_0_S : IDX_Q4_0_S),
                         _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                           0x0004000400040004LL, 0x0004000400040004LL),
                         _mm512_set1_epi8(15), _mm512_set1_epi8(16), _mm512_set1_epi8((char)0x80),
                         five, five ? 22 : 18, bytemask(2 * (five ? 22 : 18)), bytemask(five ? 22 : 18)};
    return d;
}

/* the block pair at p0 (only its first block when !two): unsigned values, and lane scales in *s */
T_V512 AI __m512i q45_pair(const q45_dec_t *d, const uint8_t *p0, int two, __m512 *s) {
    const __m512i v = _mm512_maskz_loadu_epi8(two ? d->m2 : d->m1, p0);
    __m512i u = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(_mm512_permutexvar_epi16(d->iq, v), d->sh), d->m0f,
                                          d->x80, 0xEA);
    if (d->five) {
        uint32_t h0, h1 = 0;
        memcpy(&h0, p0 + 2, 4);
        if (two) memcpy(&h1, p0 + d->bs + 2, 4);
        u = _mm512_mask_add_epi8(u, (__mmask64)h0 | ((__mmask64)h1 << 32), u, d->h16);
    }
    *s = halfscales(d->is, v);
    return u;
}

/* Q4_0 / Q5_0: two blocks per zmm, two accumulator sets to hide FMA latency */
T_V512 AI void fz_q4q5_0_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FZ_SETUP();
    __m512 acc2[ER_V512_NR];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
    const q45_dec_t d = q45_dec(five);
    const int nb = K / 32;
#define Q45_PAIR(ACC, i_, two)                                                  \
    {                                                                           \
        __m512 s;                                                               \
        const __m512i u = q45_pair(&d, row + (size_t)(i_) * d.bs, (two), &s);   \
        if (two) { FZ_ACCX(ACC, u, s, 32 * (i_)); }                             \
        else { FZ_ACC32(u, s, 32 * (i_)); }                                     \
    }
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        Q45_PAIR(acc, i, 1);
        Q45_PAIR(acc2, i + 2, 1);
    }
    for (; i + 2 <= nb; i += 2) Q45_PAIR(acc, i, 1);
    if (i < nb) Q45_PAIR(acc, i, 0);
#undef Q45_PAIR
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    FZ_FINISH();
}

T_V512 AI void fz_q8_0_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FZ_SETUP();
    __m512 acc2[ER_V512_NR];
    for (int r = 0; r < NR; r++) acc2[r] = _mm512_setzero_ps();
    const int nb = K / 32;
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const __m512i is = _mm512_loadu_si512(IDX_Q8_0_S);
#define Q8_PAIR(ACC, i_)                                                                              \
    {                                                                                                 \
        const uint8_t *p0 = row + (size_t)(i_) * 34;                                                  \
        __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2)));            \
        v = _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)(p0 + 36)), 1);                 \
        const __m512i u = _mm512_xor_si512(v, x80);                                                   \
        const __m512 s = halfscales(is, _mm512_loadu_si512(p0));                                      \
        FZ_ACCX(ACC, u, s, 32 * (i_));                                                                \
    }
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        Q8_PAIR(acc, i);
        Q8_PAIR(acc2, i + 2);
    }
    for (; i + 2 <= nb; i += 2) Q8_PAIR(acc, i);
#undef Q8_PAIR
    if (i < nb) {
        const uint8_t *p0 = row + (size_t)i * 34;
        const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(0xFFFFFFFFull, p0 + 2), x80);
        const __m512 s = halfscales(is, _mm512_maskz_loadu_epi8(bytemask(34), p0));
        FZ_ACC32(u, s, 32 * i);
    }
    for (int r = 0; r < NR; r++) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    FZ_FINISH();
}

/* ---- K-quants with Q8_K-style activations (one scale per 256, sums per 16):
 * maddubs (u8 weights x s8 activations -> s16 pairs) then dpwssd with the integer
 * sub-block scales, accumulated in int32 over a super-block. */

/* K-quant kernels for 2+ activation rows: these stream slower than one row does, so they fetch
 * further ahead (into L2) to keep the memory busy while they compute */
#ifndef ER_FK_PF
#define ER_FK_PF 4096 /* 0.5B ffn_down (896 x 4864) at 8 rows, 24 matrices in turn: Q4_K 535 -> 377 us, Q6_K 567 -> 350 */
#define ER_FK_HINT _MM_HINT_T1
#endif
#define FK_SETUP()                                                      \
    const int nb = K / 256;                                             \
    __m512 facc[ER_V512_NR];                                                     \
    __m256 macc[ER_V512_NR];                                                     \
    const int8_t *kq[ER_V512_NR];                                                \
    const float *kd[ER_V512_NR];                                                 \
    const int16_t *kb[ER_V512_NR];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        facc[r] = _mm512_setzero_ps();                                  \
        macc[r] = _mm256_setzero_ps();                                  \
        kq[r] = A->kq + (size_t)(b + r) * K;                            \
        kd[r] = A->kd + (size_t)(b + r) * nb;                           \
        kb[r] = A->kb + (size_t)(b + r) * (K / 16);                     \
    }

static const uint16_t IDX_K45_SC[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}};
static const uint16_t IDX_K45_M[32] = {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
static const uint16_t IDX_Q6K_SC[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
     14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

T_V512 AI void fk_q45_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FK_SETUP();
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    const __m512i shn = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i im = _mm512_loadu_si512(IDX_K45_M);
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * bsz;
        _mm_prefetch((const char *)blk + ER_FK_PF, ER_FK_HINT);
        _mm_prefetch((const char *)blk + ER_FK_PF + 64, ER_FK_HINT);
        _mm_prefetch((const char *)blk + ER_FK_PF + 128, ER_FK_HINT);
        const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
        /* 12 packed bytes -> [sc0..7, m0..7] (6 bits each), as dwords (u0, u1, u2):
         * sc_lo = u0 & 0x3f.., sc_hi = (u2 & 0x0f..) | ((u0 >> 2) & 0x30..),
         * m_lo = u1 & 0x3f.., m_hi = ((u2 >> 4) & 0x0f..) | ((u1 >> 2) & 0x30..) */
        const __m128i v = _mm_loadu_si128((const __m128i *)(blk + 4)); /* 4 extra bytes of qh/qs: unused */
        const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
        const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2);
        const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
        const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
        const __m512i scw = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_or_si128(lo, hi)));
        const uint8_t *qs = blk + (five ? 48 : 16);
        __m512i qh = _mm512_setzero_si512();
        if (five) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
        __m512i isum[ER_V512_NR];
        for (int r = 0; r < NR; r++) isum[r] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
            __m512i u = _mm512_and_si512(_mm512_srlv_epi16(v, shn), m0f);
            if (five) {
                const __m512i bit = _mm512_mask_mov_epi8(_mm512_set1_epi8((char)(1 << (2 * c))), 0xFFFFFFFF00000000ull,
                                                         _mm512_set1_epi8((char)(2 << (2 * c))));
                u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bit), u, h16);
            }
            const __m512i sc = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_K45_SC[c]), scw);
            for (int r = 0; r < NR; r++) {
                const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(kq[r] + 256 * i + 64 * c));
                isum[r] = _mm512_dpwssd_epi32(isum[r], p, sc);
            }
        }
        const __m256i m16 = _mm512_castsi512_si256(_mm512_permutexvar_epi16(im, scw));
        for (int r = 0; r < NR; r++) {
            const float da = kd[r][i];
            facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * da), facc[r]);
            const __m256i mi = _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i)));
            macc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(facc[r]) - hsum256(macc[r]);
}

T_V512 AI void fk_q6_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FK_SETUP();
    (void)macc;
    const block_q6_K *bk = (const block_q6_K *)row;
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i shA = _mm512_setr_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    const __m512i shB = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    for (int i = 0; i < nb; i++) {
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 64, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 128, ER_FK_HINT);
        _mm_prefetch((const char *)&bk[i] + ER_FK_PF + 192, ER_FK_HINT);
        const float d = _cvtsh_ss(rd16(&bk[i].d));
        const __m512i scw = _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)bk[i].scales)));
        __m512i isum[ER_V512_NR];
        for (int r = 0; r < NR; r++) isum[r] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512(bk[i].ql + 64 * h);
            const __m512i QH = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h)));
            const __m512i uA = _mm512_ternarylogic_epi32(L, m0f, _mm512_and_si512(_mm512_sllv_epi16(QH, shA), m30), 0xEA);
            const __m512i uB = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L, 4), m0f,
                                                         _mm512_and_si512(_mm512_srlv_epi16(QH, shB), m30), 0xEA);
            const __m512i sA = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h]), scw);
            const __m512i sB = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h + 1]), scw);
            for (int r = 0; r < NR; r++) {
                const int8_t *qa = kq[r] + 256 * i + 128 * h;
                isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(uA, _mm512_loadu_si512(qa)), sA);
                isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(uB, _mm512_loadu_si512(qa + 64)), sB);
            }
        }
        const __m256i sc16 = _mm512_castsi512_si256(scw);
        for (int r = 0; r < NR; r++) {
            /* value = d*sc*(q-32): subtract 32 * sum_g sc_g * bsum_g */
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i))), 5);
            const __m512i t = _mm512_sub_epi32(isum[r], _mm512_zextsi256_si512(o));
            facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * kd[r][i]), facc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += _mm512_reduce_add_ps(facc[r]);
}

#define FZ_WRAP(name, call)                                                                     \
    T_V512 static void name(const uint8_t *row, int K, const act_t *A, int b, int nr, float *res) { \
        for (int r = 0; r < nr; r++) res[r] = 0.f;                                              \
        switch (nr) {                                                                           \
        case 1: { const int NR_ = 1; call; } break;                                             \
        case 2: { const int NR_ = 2; call; } break;                                             \
        case 3: { const int NR_ = 3; call; } break;                                             \
        case 4: { const int NR_ = 4; call; } break;                                             \
        case 5: { const int NR_ = 5; call; } break;                                             \
        case 6: { const int NR_ = 6; call; } break;                                             \
        case 7: { const int NR_ = 7; call; } break;                                             \
        default: { const int NR_ = 8; call; } break;                                            \
        }                                                                                       \
    }

FZ_WRAP(fz_q4_0, fz_q4q5_0_nr(0, row, K, A, b, NR_, res))
FZ_WRAP(fz_q5_0, fz_q4q5_0_nr(1, row, K, A, b, NR_, res))
FZ_WRAP(fz_q8_0, fz_q8_0_nr(row, K, A, b, NR_, res))
FZ_WRAP(fz_q4_k, fk_q45_nr(0, row, K, A, b, NR_, res))
FZ_WRAP(fz_q5_k, fk_q45_nr(1, row, K, A, b, NR_, res))
FZ_WRAP(fz_q6_k, fk_q6_nr(row, K, A, b, NR_, res))

/* ---- B = 1 (decode) K-quant kernels over NW (<= 4) weight rows per pass: the activation loads are
 * shared by the rows, the rows give independent dependency chains, and the NW horizontal sums are
 * done together with one transposed-add tree (short rows, e.g. K = 1536, are dominated otherwise by
 * the per-row reduction and setup). Same integer products and per-block float scaling as fk_*_nr. */

T_V512 AI __m128 hsum4x16(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
    const __m512d a = _mm512_castps_pd(s01), c = _mm512_castps_pd(s23);
    const __m512 t = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, c)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, c)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

T_V512 AI void fw_store(const __m512 *facc, int NW, float *out) {
    const __m512 z = _mm512_setzero_ps();
    const __m128 s = hsum4x16(facc[0], NW > 1 ? facc[1] : z, NW > 2 ? facc[2] : z, NW > 3 ? facc[3] : z);
    if (NW == 4) _mm_storeu_ps(out, s);
    else _mm_mask_storeu_ps(out, (__mmask8)((1u << NW) - 1), s);
}

/* prefetch: a pass reads [W, W + NW*rb) at NW blocks per step; block v of step i prefetches the
 * matching bytes of the next pass, W + NW*rb + (i*NW + v)*bsz, one linear stream one pass ahead */
AI const char *fw_pfp(const uint8_t *W, int64_t rb, int NW, int i, int v, size_t bsz) {
    return (const char *)W + NW * rb + ((size_t)i * NW + v) * bsz;
}

T_V512 AI void fw_q45(int five, const uint8_t *W, int64_t rb, int NW, int K, const act_t *A, float *out) {
    const int nb = K / 256;
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m512i m0f = _mm512_set1_epi8(15), h16 = _mm512_set1_epi8(16);
    const __m512i shn = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i im = _mm512_loadu_si512(IDX_K45_M);
    __m512 facc[4];
    __m256 macc[4];
    for (int v = 0; v < NW; v++) { facc[v] = _mm512_setzero_ps(); macc[v] = _mm256_setzero_ps(); }
    for (int i = 0; i < nb; i++) {
        __m512i a[4];
        for (int c = 0; c < 4; c++) a[c] = _mm512_loadu_si512(A->kq + 256 * i + 64 * c);
        const __m256i kbv = _mm256_loadu_si256((const __m256i *)(A->kb + 16 * i));
        const float da = A->kd[i];
        for (int v = 0; v < NW; v++) {
            const uint8_t *blk = W + v * rb + (size_t)i * bsz;
            const char *pp = fw_pfp(W, rb, NW, i, v, bsz);
            _mm_prefetch(pp, _MM_HINT_T0);
            _mm_prefetch(pp + 64, _MM_HINT_T0);
            _mm_prefetch(pp + 128, _MM_HINT_T0);
            const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
            const __m128i sv = _mm_loadu_si128((const __m128i *)(blk + 4));
            const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(sv, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
            const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(sv, _MM_SHUFFLE(1, 1, 0, 0)), 2);
            const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
            const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
            const __m512i scw = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_or_si128(lo, hi)));
            const uint8_t *qs = blk + (five ? 48 : 16);
            __m512i qh = _mm512_setzero_si512();
            if (five) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
            __m512i isum = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
                __m512i u = _mm512_and_si512(_mm512_srlv_epi16(q, shn), m0f);
                if (five) {
                    const __m512i bit = _mm512_mask_mov_epi8(_mm512_set1_epi8((char)(1 << (2 * c))), 0xFFFFFFFF00000000ull,
                                                             _mm512_set1_epi8((char)(2 << (2 * c))));
                    u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bit), u, h16);
                }
                const __m512i sc = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_K45_SC[c]), scw);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(u, a[c]), sc);
            }
            facc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * da), facc[v]);
            const __m256i m16 = _mm512_castsi512_si256(_mm512_permutexvar_epi16(im, scw));
            const __m256i mi = _mm256_madd_epi16(m16, kbv);
            macc[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[v]);
        }
    }
    for (int v = 0; v < NW; v++) facc[v] = _mm512_sub_ps(facc[v], _mm512_insertf32x8(_mm512_setzero_ps(), macc[v], 0));
    fw_store(facc, NW, out);
}

T_V512 AI void fw_q6(const uint8_t *W, int64_t rb, int NW, int K, const act_t *A, float *out) {
    const int nb = K / 256;
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i shA = _mm512_setr_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    const __m512i shB = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                          0x0002000200020002LL, 0x0002000200020002LL);
    __m512 facc[4];
    for (int v = 0; v < NW; v++) facc[v] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m512i a[4];
        for (int c = 0; c < 4; c++) a[c] = _mm512_loadu_si512(A->kq + 256 * i + 64 * c);
        const __m256i kbv = _mm256_loadu_si256((const __m256i *)(A->kb + 16 * i));
        const float da = A->kd[i];
        for (int v = 0; v < NW; v++) {
            const block_q6_K *bk = (const block_q6_K *)(W + v * rb) + i;
            const char *pp = fw_pfp(W, rb, NW, i, v, sizeof(block_q6_K));
            _mm_prefetch(pp, _MM_HINT_T0);
            _mm_prefetch(pp + 64, _MM_HINT_T0);
            _mm_prefetch(pp + 128, _MM_HINT_T0);
            _mm_prefetch(pp + 192, _MM_HINT_T0);
            const float d = _cvtsh_ss(rd16(&bk->d));
            const __m512i scw = _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)bk->scales)));
            __m512i isum = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++) {
                const __m512i L = _mm512_loadu_si512(bk->ql + 64 * h);
                const __m512i QH = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bk->qh + 32 * h)));
                const __m512i uA = _mm512_ternarylogic_epi32(L, m0f, _mm512_and_si512(_mm512_sllv_epi16(QH, shA), m30), 0xEA);
                const __m512i uB = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L, 4), m0f,
                                                             _mm512_and_si512(_mm512_srlv_epi16(QH, shB), m30), 0xEA);
                const __m512i sA = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h]), scw);
                const __m512i sB = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX_Q6K_SC[2 * h + 1]), scw);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(uA, a[2 * h]), sA);
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(uB, a[2 * h + 1]), sB);
            }
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(_mm512_castsi512_si256(scw), kbv), 5);
            const __m512i t = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(o));
            facc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * da), facc[v]);
        }
    }
    fw_store(facc, NW, out);
}

/* ---- B = 1 or 2, legacy types, NW weight rows per pass: each pair of 32-blocks loads its
 * activation quants, offsets and scales once for all NW rows, and decodes each weight pair once
 * for both activation rows (the row-at-a-time kernels load and decode per row) ---- */

/* Q8_0's block pair at p0 (only its first block when !two): unsigned values, lane scales in *s */
T_V512 AI __m512i q8_pair(const uint8_t *p0, int two, __m512i is, __m512i x80, __m512 *s) {
    __m512i q8 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2)));
    if (two) q8 = _mm512_inserti64x4(q8, _mm256_loadu_si256((const __m256i *)(p0 + 36)), 1);
    *s = halfscales(is, _mm512_maskz_loadu_epi8(two ? bytemask(64) : bytemask(34), p0));
    return _mm512_xor_si512(q8, x80);
}

/* qt one of Q4_0, Q5_0, Q8_0; NR activation rows (1 or 2); out row r at out + r * ldy */
T_V512 AI void fw_legacy(int qt, const uint8_t *W, int64_t rb, const int NW, int K, const act_t *A, const int NR,
                         int64_t ldy, float *out) {
    const q45_dec_t d = q45_dec(qt == ER_Q5_0);
    const int bs = qt == ER_Q8_0 ? 34 : d.bs, nb = K / 32;
    const __m512i is8 = _mm512_loadu_si512(IDX_Q8_0_S), x80 = _mm512_set1_epi8((char)0x80);
    __m512 acc[2][4];
    for (int r = 0; r < NR; r++)
        for (int v = 0; v < NW; v++) acc[r][v] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i += 2) {
        const int one = i + 1 == nb;
        __m512i xq[2], xo[2];
        __m512 xs[2];
        for (int r = 0; r < NR; r++) { /* 64 activation values (the low 32 only when `one`) */
            const int8_t *q = A->q + (size_t)r * K + 32 * i;
            const int32_t *n = A->n + (size_t)r * K / 4 + 8 * i;
            const float *l = A->l + (size_t)r * K / 4 + 8 * i;
            xq[r] = one ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q) : _mm512_loadu_si512(q);
            xo[r] = one ? _mm512_maskz_loadu_epi32(0xFF, n) : _mm512_loadu_si512(n);
            xs[r] = one ? _mm512_maskz_loadu_ps(0xFF, l) : _mm512_loadu_ps(l);
        }
        for (int v = 0; v < NW; v++) {
            const uint8_t *p0 = W + v * rb + (size_t)i * bs;
            const char *pp = fw_pfp(W, rb, NW, i / 2, v, 2 * (size_t)bs);
            _mm_prefetch(pp, _MM_HINT_T0);
            if (2 * bs > 64) _mm_prefetch(pp + 64, _MM_HINT_T0);
            __m512 s;
            const __m512i u = qt == ER_Q8_0 ? q8_pair(p0, !one, is8, x80, &s) : q45_pair(&d, p0, !one, &s);
            for (int r = 0; r < NR; r++)
                acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(xo[r], u, xq[r])),
                                            _mm512_mul_ps(s, xs[r]), acc[r][v]);
        }
    }
    for (int r = 0; r < NR; r++) fw_store(acc[r], NW, out + r * ldy);
}

/* the legacy-type pass kernels with NW and NR as constants */
typedef void (*fw_legacy_fn)(const uint8_t *, int64_t, int, int, const act_t *, int, int64_t, float *);
#define FWL_WRAP(name, qt)                                                                                     \
    T_V512 static void name(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, int nr, int64_t ldy,  \
                            float *out) {                                                                      \
        switch (nr > 1 ? 4 + nw : nw) {                                                                        \
        case 1: fw_legacy(qt, W, rb, 1, K, A, 1, ldy, out); break;                                             \
        case 2: fw_legacy(qt, W, rb, 2, K, A, 1, ldy, out); break;                                             \
        case 3: fw_legacy(qt, W, rb, 3, K, A, 1, ldy, out); break;                                             \
        case 4: fw_legacy(qt, W, rb, 4, K, A, 1, ldy, out); break;                                             \
        case 5: fw_legacy(qt, W, rb, 1, K, A, 2, ldy, out); break;                                             \
        case 6: fw_legacy(qt, W, rb, 2, K, A, 2, ldy, out); break;                                             \
        case 7: fw_legacy(qt, W, rb, 3, K, A, 2, ldy, out); break;                                             \
        default: fw_legacy(qt, W, rb, 4, K, A, 2, ldy, out); break;                                            \
        }                                                                                                      \
    }
FWL_WRAP(fwl_q4_0, ER_Q4_0)
FWL_WRAP(fwl_q5_0, ER_Q5_0)
FWL_WRAP(fwl_q8_0, ER_Q8_0)
#undef FWL_WRAP

typedef void (*fused_w_fn)(const uint8_t *, int64_t, int, int, const act_t *, float *);

#define FW_WRAP(name, call)                                                                        \
    T_V512 static void name(const uint8_t *W, int64_t rb, int nw, int K, const act_t *A, float *out) { \
        switch (nw) {                                                                              \
        case 1: { const int NW_ = 1; call; } break;                                                \
        case 2: { const int NW_ = 2; call; } break;                                                \
        case 3: { const int NW_ = 3; call; } break;                                                \
        default: { const int NW_ = 4; call; } break;                                               \
        }                                                                                          \
    }

FW_WRAP(fw_q4_k, fw_q45(0, W, rb, NW_, K, A, out))
FW_WRAP(fw_q5_k, fw_q45(1, W, rb, NW_, K, A, out))
FW_WRAP(fw_q6_k, fw_q6(W, rb, NW_, K, A, out))

/* ---- fused AVX2 K-quant kernels (Q8_K-style activations; maddubs + madd with the sub-block scales) ---- */

T_AVX2 AI __m128i kscales_sse(const uint8_t *p12) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p12);
    const __m128i X = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
    const __m128i Y = _mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2);
    const __m128i lo = _mm_and_si128(X, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i hi = _mm_and_si128(Y, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    return _mm_or_si128(lo, hi); /* [sc0..7, m0..7] */
}

#define FA_SETUP()                                                      \
    const int nb = K / 256;                                             \
    __m256 facc[4], macc[4];                                            \
    const int8_t *kq[4];                                                \
    const float *kd[4];                                                 \
    const int16_t *kb[4];                                               \
    for (int r = 0; r < NR; r++) {                                      \
        facc[r] = _mm256_setzero_ps();                                  \
        macc[r] = _mm256_setzero_ps();                                  \
        kq[r] = A->kq + (size_t)(b + r) * K;                            \
        kd[r] = A->kd + (size_t)(b + r) * nb;                           \
        kb[r] = A->kb + (size_t)(b + r) * (K / 16);                     \
    }

T_AVX2 AI void fa_q45_nr(int five, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FA_SETUP();
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i m0f = _mm256_set1_epi8(15), h16 = _mm256_set1_epi8(16);
    const __m128i midx = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * bsz;
        _mm_prefetch((const char *)blk + 1024, _MM_HINT_T0);
        _mm_prefetch((const char *)blk + 1024 + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)blk + 1024 + 128, _MM_HINT_T0);
        const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
        const __m128i sc8 = kscales_sse(blk + 4);
        uint8_t scb[16];
        _mm_storeu_si128((__m128i *)scb, sc8);
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, midx));
        const uint8_t *qs = blk + (five ? 48 : 16);
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        __m256i isum[4];
        for (int r = 0; r < NR; r++) isum[r] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m0f), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0f);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c), 4), h16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c + 1), 4), h16));
            }
            const __m256i s0 = _mm256_set1_epi16(scb[2 * c]), s1 = _mm256_set1_epi16(scb[2 * c + 1]);
            for (int r = 0; r < NR; r++) {
                const int8_t *qa = kq[r] + 256 * i + 64 * c;
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)qa)), s0);
                const __m256i p1 =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qa + 32))), s1);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p0, p1));
            }
        }
        for (int r = 0; r < NR; r++) {
            const float da = kd[r][i];
            facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * da), facc[r]);
            const __m256i mi = _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i)));
            macc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin * da), macc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(facc[r]) - hsum256(macc[r]);
}

static const uint8_t IDX_Q6K_A2[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

T_AVX2 AI void fa_q6_nr(const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    FA_SETUP();
    (void)macc;
    const block_q6_K *bk = (const block_q6_K *)row;
    const __m256i m0f = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    for (int i = 0; i < nb; i++) {
        _mm_prefetch((const char *)&bk[i] + 1024, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)&bk[i] + 1024 + 192, _MM_HINT_T0);
        const float d = _cvtsh_ss(rd16(&bk[i].d));
        const __m128i sc = _mm_loadu_si128((const __m128i *)bk[i].scales);
        __m256i isum[4];
        for (int r = 0; r < NR; r++) isum[r] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(bk[i].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(bk[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(bk[i].qh + 32 * h));
            __m256i u[4];
            u[0] = _mm256_or_si256(_mm256_and_si256(l0, m0f), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            u[1] = _mm256_or_si256(_mm256_and_si256(l1, m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m0f),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int j = 0; j < 4; j++) {
                const __m256i sv = _mm256_cvtepi8_epi16(
                    _mm_shuffle_epi8(sc, _mm_loadu_si128((const __m128i *)IDX_Q6K_A2[4 * h + j])));
                for (int r = 0; r < NR; r++) {
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(kq[r] + 256 * i + 128 * h + 32 * j));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u[j], a), sv));
                }
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc);
        for (int r = 0; r < NR; r++) {
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(kb[r] + 16 * i))), 5);
            facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[r], o)), _mm256_set1_ps(d * kd[r][i]), facc[r]);
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(facc[r]);
}

#define FA_WRAP(name, call)                                                                     \
    T_AVX2 static void name(const uint8_t *row, int K, const act_t *A, int b, int nr, float *res) { \
        for (int r = 0; r < nr; r++) res[r] = 0.f;                                              \
        switch (nr) {                                                                           \
        case 1: { const int NR_ = 1; call; } break;                                             \
        case 2: { const int NR_ = 2; call; } break;                                             \
        case 3: { const int NR_ = 3; call; } break;                                             \
        default: { const int NR_ = 4; call; } break;                                            \
        }                                                                                       \
    }

FA_WRAP(fa_q4_k, fa_q45_nr(0, row, K, A, b, NR_, res))
FA_WRAP(fa_q5_k, fa_q45_nr(1, row, K, A, b, NR_, res))
FA_WRAP(fa_q6_k, fa_q6_nr(row, K, A, b, NR_, res))

/* legacy Q4_0 / Q8_0 on AVX2: per-32 activations, one float FMA per block */
T_AVX2 AI void fa_q4q8_0_nr(int eight, const uint8_t *row, int K, const act_t *A, int b, int NR, float *res) {
    const int nb = K / 32;
    __m256 acc[4], acc2[4];
    float off[4];
    const int8_t *q[4];
    const float *xl[4], *s32[4];
    for (int r = 0; r < NR; r++) {
        acc[r] = acc2[r] = _mm256_setzero_ps();
        off[r] = 0.f;
        q[r] = A->q + (size_t)(b + r) * K;
        xl[r] = A->l + (size_t)(b + r) * K / 4;
        s32[r] = A->s32 + (size_t)(b + r) * nb;
    }
    const __m256i m0f = _mm256_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < nb; i++) {
        __m256i u, wv = _mm256_setzero_si256();
        float dw;
        if (eight) {
            const block_q8_0 *bk = (const block_q8_0 *)row + i;
            wv = _mm256_loadu_si256((const __m256i *)bk->qs);
            u = _mm256_sign_epi8(wv, wv);
            dw = _cvtsh_ss(rd16(&bk->d));
        } else {
            const block_q4_0 *bk = (const block_q4_0 *)row + i;
            const __m128i qq = _mm_loadu_si128((const __m128i *)bk->qs);
            u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), m0f);
            dw = _cvtsh_ss(rd16(&bk->d));
        }
        for (int r = 0; r < NR; r++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(q[r] + 32 * i));
            if (eight) a = _mm256_sign_epi8(a, wv);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones);
            const __m256 sc = _mm256_set1_ps(dw * xl[r][8 * i]);
            if (i & 1) acc2[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc2[r]);
            else acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r]);
            if (!eight) off[r] += dw * s32[r][i];
        }
    }
    for (int r = 0; r < NR; r++) res[r] += hsum256(_mm256_add_ps(acc[r], acc2[r])) - 8.f * off[r];
}

FA_WRAP(fa_q4_0, fa_q4q8_0_nr(0, row, K, A, b, NR_, res))
FA_WRAP(fa_q8_0, fa_q4q8_0_nr(1, row, K, A, b, NR_, res))
#endif

static int is_kquant(int qt) { return qt == ER_Q4_K || qt == ER_Q5_K || qt == ER_Q6_K; }

static fused_fn pick_fused(int qt) {
#ifdef ER_X86
    if (g_isa >= ISA_AVX512VNNI) {
        switch (qt) {
        case ER_Q4_0: return fz_q4_0;
        case ER_Q5_0: return fz_q5_0;
        case ER_Q8_0: return fz_q8_0;
        case ER_Q4_K: return fz_q4_k;
        case ER_Q5_K: return fz_q5_k;
        case ER_Q6_K: return fz_q6_k;
        default: break;
        }
    } else if (g_isa >= ISA_AVX2) {
        switch (qt) {
        case ER_Q4_0: return fa_q4_0;
        case ER_Q8_0: return fa_q8_0;
        case ER_Q4_K: return fa_q4_k;
        case ER_Q5_K: return fa_q5_k;
        case ER_Q6_K: return fa_q6_k;
        default: break;
        }
    }
#endif
    (void)qt;
    return NULL;
}

typedef void (*core_fn)(const int8_t *, const float *, const float *, int, const act_t *, int, int, float *);

static void pick_q(decode_fn *dec, core_fn *core) {
    if (g_isa < 0) detect_isa();
    *dec = decode_scalar;
    *core = core_scalar;
#ifdef ER_X86
    if (g_isa >= ISA_AVX2) { *dec = decode_avx2; *core = core_avx2; }
    if (g_isa >= ISA_AVX512VNNI) *core = core_v512;
#endif
}

/* ---------------------------------------------------- quantized matmul */

#define BTILE 32


/* ---- batched (prefill) GEMM for B > 8 on AVX-512 VNNI: lanes = 16 activation rows.
 * Activations are repacked per group of 16 rows as [K/4][16 rows][4 bytes]; a broadcast of 4
 * decoded weight bytes times one 64-byte load gives 16 rows x 4 MACs per dpbusd, and the
 * float conversion happens once per G (16 or 32) values instead of once per 4. */

typedef struct {
    int K, G, ngroups;
    int8_t *P;    /* ngroups * K * 16 */
    int32_t *NS;  /* ngroups * (K/G) * 16 : -128 * sum of the G quants */
    float *DA;    /* ngroups * (K/G) * 16 : activation scale */
    float *XS;    /* ngroups * (K/16) * 16 : scale * sum of 16 quants */
} pack_t;

__attribute__((unused)) static void pack_free(pack_t *pk) { (void)pk; /* scratch slots */ }

__attribute__((unused)) static int pack_acts(pack_t *pk, const act_t *A, int B, int K, int G) {
    memset(pk, 0, sizeof(*pk));
    pk->K = K; pk->G = G; pk->ngroups = (B + 15) / 16;
    const size_t ng = (size_t)pk->ngroups;
    pk->P = scratch(25, ng * K * 16);
    pk->NS = scratch(26, ng * (K / G) * 16 * 4);
    pk->DA = scratch(27, ng * (K / G) * 16 * 4);
    pk->XS = scratch(28, ng * (K / 16) * 16 * 4);
    if (!pk->P || !pk->NS || !pk->DA || !pk->XS) return -1;
    memset(pk->P, 0, ng * K * 16);
    memset(pk->NS, 0, ng * (K / G) * 16 * 4);
    memset(pk->DA, 0, ng * (K / G) * 16 * 4);
    memset(pk->XS, 0, ng * (K / 16) * 16 * 4);
    for (int r = 0; r < B; r++) {
        const size_t g = (size_t)(r / 16), l = (size_t)(r % 16);
        const int8_t *q = A->q + (size_t)r * K;
        const int32_t *xn = A->n + (size_t)r * K / 4;
        int8_t *P = pk->P + g * K * 16;
        for (int j = 0; j < K / 4; j++) memcpy(P + ((size_t)j * 16 + l) * 4, q + 4 * j, 4);
        for (int blk = 0; blk < K / G; blk++) {
            int32_t t = 0;
            for (int j = 0; j < G / 4; j++) t += xn[blk * G / 4 + j];
            pk->NS[(g * (K / G) + blk) * 16 + l] = t;
            pk->DA[(g * (K / G) + blk) * 16 + l] = A->l[(size_t)r * K / 4 + blk * G / 4];
        }
        for (int g16 = 0; g16 < K / 16; g16++) pk->XS[(g * (K / 16) + g16) * 16 + l] = A->s[(size_t)r * K / 16 + g16];
    }
    return 0;
}

#ifdef ER_X86
/* NW weight rows (decoded) x NG groups of 16 activation rows; out[w][16*NG] */
T_V512 AI void gemm_v512_g(const int8_t *const *w, const float *const *wl, const float *const *mw, const int NW, int K,
                           const int G, const pack_t *pk, int g0, const int NG, float *out) {
    __m512 facc[4][2];
    __m512i iacc[4][2];
    const int nbk = K / G;
    const int8_t *P[2];
    const int32_t *NS[2];
    const float *DA[2];
    for (int gg = 0; gg < NG; gg++) {
        for (int v = 0; v < NW; v++) facc[v][gg] = _mm512_setzero_ps();
        P[gg] = pk->P + (size_t)(g0 + gg) * K * 16;
        NS[gg] = pk->NS + (size_t)(g0 + gg) * nbk * 16;
        DA[gg] = pk->DA + (size_t)(g0 + gg) * nbk * 16;
    }
    for (int blk = 0; blk < nbk; blk++) {
        for (int gg = 0; gg < NG; gg++) {
            const __m512i ns = _mm512_loadu_si512(NS[gg] + 16 * blk);
            for (int v = 0; v < NW; v++) iacc[v][gg] = ns;
        }
        for (int j = 0; j < G / 4; j++) {
            __m512i bw[4];
            for (int v = 0; v < NW; v++) {
                uint32_t w4;
                memcpy(&w4, w[v] + blk * G + 4 * j, 4);
                bw[v] = _mm512_set1_epi32((int)(w4 ^ 0x80808080u));
            }
            for (int gg = 0; gg < NG; gg++) {
                const __m512i a = _mm512_loadu_si512(P[gg] + ((size_t)blk * G / 4 + j) * 64);
                for (int v = 0; v < NW; v++) iacc[v][gg] = _mm512_dpbusd_epi32(iacc[v][gg], bw[v], a);
            }
        }
        for (int gg = 0; gg < NG; gg++) {
            const __m512 da = _mm512_loadu_ps(DA[gg] + 16 * blk);
            for (int v = 0; v < NW; v++)
                facc[v][gg] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[v][gg]),
                                              _mm512_mul_ps(_mm512_set1_ps(wl[v][blk * G / 4]), da), facc[v][gg]);
        }
    }
    /* additive terms: every decoder repeats each min over a pair of 16s (per-32 mins), so one FMA
     * per 32 values with the activation sums of the pair */
    int anym = 0;
    for (int v = 0; v < NW; v++) anym |= mw[v] != NULL;
    if (anym) {
        for (int g32 = 0; g32 < K / 32; g32++) {
            __m512 xs[2];
            for (int gg = 0; gg < NG; gg++) {
                const float *p = pk->XS + ((size_t)(g0 + gg) * (K / 16) + 2 * g32) * 16;
                xs[gg] = _mm512_add_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16));
            }
            for (int v = 0; v < NW; v++) {
                if (!mw[v]) continue;
                const __m512 m = _mm512_set1_ps(mw[v][2 * g32]);
                for (int gg = 0; gg < NG; gg++) facc[v][gg] = _mm512_fmadd_ps(m, xs[gg], facc[v][gg]);
            }
        }
    }
    for (int v = 0; v < NW; v++)
        for (int gg = 0; gg < NG; gg++) _mm512_storeu_ps(out + 32 * v + 16 * gg, facc[v][gg]);
}

T_V512 static void gemm_v512(const int8_t *const *w, const float *const *wl, const float *const *mw, int nw, int K,
                             int G, const pack_t *pk, int g0, int ng, float *out) {
#define GV(NW_, G_, NG_) gemm_v512_g(w, wl, mw, NW_, K, G_, pk, g0, NG_, out)
#define GVN(G_, NG_)                                \
    switch (nw) {                                   \
    case 4: GV(4, G_, NG_); break;                  \
    case 3: GV(3, G_, NG_); break;                  \
    case 2: GV(2, G_, NG_); break;                  \
    default: GV(1, G_, NG_); break;                 \
    }
    if (G == 32) {
        if (ng == 2) { GVN(32, 2) } else { GVN(32, 1) }
    } else {
        if (ng == 2) { GVN(16, 2) } else { GVN(16, 1) }
    }
#undef GVN
#undef GV
}
#endif

/* returns 1 when handled */
#ifdef ER_X86
typedef struct {
    int qt;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K, G, B, t0, t1;
    decode_fn dec;
    const pack_t *pk;
    float *y;
    int err;
} gemm_ctx_t;

/* weight-row quads [q0, q1) x activation row groups [t0, t1) */
static void gemm_task(void *p, int q0, int q1) {
    gemm_ctx_t *c = p;
    const int K = c->K, N = c->N, B = c->B;
    const size_t per = 2 * (size_t)K + (size_t)K / 4 + 64; /* int8 row, K/4 lane scales, K/16 mins */
    uint8_t *buf = scratch(9, 4 * per);
    if (!buf) { c->err = -2; return; }
    int8_t *wq[4];
    float *wl[4], *mwb[4];
    for (int v = 0; v < 4; v++) {
        wq[v] = (int8_t *)(buf + v * per);
        wl[v] = (float *)(buf + v * per + K);
        mwb[v] = (float *)(buf + v * per + 2 * (size_t)K);
    }
    for (int np = q0; np < q1; np++) {
        const int n = 4 * np, nw = N - n < 4 ? N - n : 4;
        const float *mw[4] = {NULL, NULL, NULL, NULL};
        for (int v = 0; v < nw; v++)
            mw[v] = c->dec(c->qt, c->W + (size_t)(n + v) * c->row_bytes, K, wq[v], wl[v], mwb[v]) ? mwb[v] : NULL;
        float out[128];
        for (int g = c->t0; g < c->t1; g += 2) {
            const int ng = c->t1 - g >= 2 ? 2 : 1;
            gemm_v512((const int8_t *const *)wq, (const float *const *)wl, mw, nw, K, c->G, c->pk, g, ng, out);
            for (int v = 0; v < nw; v++)
                for (int l = 0; l < 16 * ng; l++) {
                    const int r = 16 * g + l;
                    if (r < B) c->y[(size_t)r * N + n + v] = out[32 * v + l];
                }
        }
    }
}
#endif

static int64_t g_gemm_l2 = 1 << 20; /* bytes of packed activations per GEMM tile (er_set_gemm_l2); 0.5B prefill, 8 x 64 tokens, same process: 64 rows a tile 498 tok/s, 256 KiB 533, 1 MiB 567, more the same */
ER_API int64_t er_set_gemm_l2(int64_t b) { int64_t old = g_gemm_l2; g_gemm_l2 = b; return old; }
/* returns 1 when handled */
static int matmul_gemm(int qt, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B, float *y,
                       int *err) {
#ifdef ER_X86
    if (g_isa < ISA_AVX512VNNI || B <= ER_FUSED_MAX_B || !g_fused) return 0;
    decode_fn dec;
    core_fn core;
    pick_q(&dec, &core);
    const int G = qt == ER_Q6_K ? 16 : 32;
    pack_t pk;
    if (pack_acts(&pk, A, B, K, G)) { pack_free(&pk); *err = -2; return 1; }
    const int nt = nthreads();
    const int par = nt > 1 && (int64_t)N * K * B >= (1 << 19);
    /* row groups per tile (K * 16 bytes of packed activations a group): each weight row is decoded
     * once per tile, so fewer, larger tiles decode and read the weights fewer times */
    int GT = (int)((size_t)g_gemm_l2 / ((size_t)K * 16));
    GT = GT < 4 ? 4 : GT;
    gemm_ctx_t c = {qt, W, row_bytes, N, K, G, B, 0, 0, dec, &pk, y, 0};
    for (int t0 = 0; t0 < pk.ngroups; t0 += GT) {
        c.t0 = t0;
        c.t1 = t0 + GT < pk.ngroups ? t0 + GT : pk.ngroups;
        pool_run(gemm_task, &c, (N + 3) / 4, par ? nt : 1, 1);
    }
    *err = c.err;
    pack_free(&pk);
    return 1;
#else
    (void)qt; (void)W; (void)row_bytes; (void)N; (void)K; (void)A; (void)B; (void)y; (void)err;
    return 0;
#endif
}

#include "tile16.h"
#include "tiles.h"

ER_API int er_set_tiles_min_b(int b) { int old = g_tiles_min_b; g_tiles_min_b = b < 1 ? 1 : b; return old; }
ER_API int er_set_tile(int on) { int old = g_tile; g_tile = on != 0; return old; }
ER_API int er_set_fw0_b2(int on) { int old = g_fw0_b2; g_fw0_b2 = on != 0; return old; }
ER_API int er_set_fw0(int nw) { int old = g_fw0; g_fw0 = nw < 0 ? 0 : nw > 4 ? 4 : nw; return old; }

static int use_fused(int qt, int B) { return B <= ER_FUSED_MAX_B && g_fused && pick_fused(qt) != NULL; }
static int wants_kact(int qt, int B) { return is_kquant(qt) && use_fused(qt, B); }

static void fused_rows(fused_fn fz, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B,
                       float *y, int n0, int n1) {
#ifdef ER_X86
    /* batch tiles (tiles.h) when this matrix has them. Q6_K's from one row more: at 2 rows they ran
     * slower than the row kernels (1536 x 8960: 445 against 381 us), at 4 and 8 faster (410 against
     * 545, 610 against 900) */
    const int tqt = fz == fz_q4_0 ? ER_Q4_0 : fz == fz_q5_0 ? ER_Q5_0 : fz == fz_q8_0 ? ER_Q8_0
                    : fz == fz_q4_k ? ER_Q4_K : fz == fz_q6_k ? ER_Q6_K : -1;
    if (tqt >= 0 && B >= g_tiles_min_b + (tqt == ER_Q6_K) && g_isa >= ISA_AVX512VNNI && n0 % 16 == 0) {
        const uint8_t *T = tiles_find(W, tqt, N, K, row_bytes);
        if (T) {
            const size_t tb = (size_t)er_tiles_size(tqt, 16, K); /* one tile's bytes */
            for (; n0 + 16 <= n1; n0 += 16) tiles_tile(tqt, T + (size_t)(n0 / 16) * tb, K, A, B, y, N, n0);
            if (n0 >= n1) return;
        }
    }
    /* legacy types, 1 or 2 activation rows: several weight rows per pass for short rows only; a long
     * row alone runs faster on the row kernel, which keeps two accumulator sets (Q4_0 896x4864:
     * 97 vs 110 us) */
    const fw_legacy_fn fwl = B > 2 || !g_fw0 || K >= 4096 || g_isa < ISA_AVX512VNNI ? NULL
                             : fz == fz_q4_0 ? fwl_q4_0 : fz == fz_q5_0 ? fwl_q5_0 : fz == fz_q8_0 ? fwl_q8_0 : NULL;
    if (fwl && (B == 1 || g_fw0_b2)) {
        const int nwx = g_fw0 > 1 ? g_fw0 : 2;
        for (int n = n0; n < n1; n += nwx)
            fwl(W + (size_t)n * row_bytes, row_bytes, n1 - n < nwx ? n1 - n : nwx, K, A, B, N, y + n);
        return;
    }
    if (B == 1) {
        const fused_w_fn fw = fz == fz_q4_k ? fw_q4_k : fz == fz_q5_k ? fw_q5_k : fz == fz_q6_k ? fw_q6_k : NULL;
        if (fw) {
            /* rows per pass: 2 for short rows; 1 for long ones, whose row-interleaved reads cost
             * more bandwidth than the shared activation loads save (1.5B ffn_down: 24.7 vs 17.6 GB/s) */
            const int nwx = K >= 4096 ? 1 : 2;
            for (int n = n0; n < n1; n += nwx) fw(W + (size_t)n * row_bytes, row_bytes, n1 - n < nwx ? n1 - n : nwx, K, A, y + n);
            return;
        }
    }
#endif
#ifdef ER_X86
    if (B >= 2 && g_tile && g_bitalg && g_isa >= ISA_AVX512VNNI && (fz == fz_q4_0 || fz == fz_q5_0 || fz == fz_q8_0)) {
        const int qt = fz == fz_q4_0 ? ER_Q4_0 : fz == fz_q5_0 ? ER_Q5_0 : ER_Q8_0;
        for (; n0 + 16 <= n1; n0 += 16)
            for (int b0 = 0; b0 < B; b0 += 8) { /* up to 8 activation rows per pass over the tile */
                act_t Ab = *A;
                Ab.q += (size_t)b0 * K;
                Ab.l += (size_t)b0 * K / 4;
                tile16(qt, W, row_bytes, N, K, &Ab, A->sq + (size_t)b0 * (K / 32), B - b0 < 8 ? B - b0 : 8,
                       y + (size_t)b0 * N, n0);
            }
    }
#endif
    const int per = g_isa >= ISA_AVX512VNNI ? ER_V512_NR : 4;
    for (int n = n0; n < n1; n++) {
        float res[ER_V512_NR];
        for (int b = 0; b < B; b += per) {
            const int nr = B - b < per ? B - b : per;
            fz(W + (size_t)n * row_bytes, K, A, b, nr, res);
            for (int r = 0; r < nr; r++) y[(size_t)(b + r) * N + n] = res[r];
        }
    }
}

typedef struct {
    fused_fn fz;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const act_t *A;
    int B;
    float *y;
} fused_ctx_t;

static void fused_task(void *p, int n0, int n1) {
    const fused_ctx_t *c = p;
    fused_rows(c->fz, c->W, c->row_bytes, c->N, c->K, c->A, c->B, c->y, n0, n1);
}

/* decoded-row path: each weight row decoded once per activation tile [b0, b1) */
typedef struct {
    int qt;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const act_t *A;
    int B;
    float *y;
    decode_fn dec;
    core_fn core;
    int b0, b1, err;
} rows_ctx_t;

/* per-thread buffers of one decoded row: int8 values, K/4 lane scales, K/16 mins */
static int row_bufs(int K, int8_t **wq, float **wl, float **mw) {
    uint8_t *buf = scratch(9, 2 * (size_t)K + (size_t)K / 4 + 64);
    if (!buf) return -1;
    *wq = (int8_t *)buf;
    *wl = (float *)(buf + K);
    *mw = (float *)(buf + 2 * (size_t)K);
    return 0;
}

static void rows_task(void *p, int n0, int n1) {
    rows_ctx_t *c = p;
    int8_t *wq;
    float *wl, *mw;
    if (row_bufs(c->K, &wq, &wl, &mw)) { c->err = -2; return; }
    for (int n = n0; n < n1; n++) {
        const int has_m = c->dec(c->qt, c->W + (size_t)n * c->row_bytes, c->K, wq, wl, mw);
        float res[4];
        for (int b = c->b0; b < c->b1; b += 4) {
            const int nr = c->b1 - b < 4 ? c->b1 - b : 4;
            c->core(wq, wl, has_m ? mw : NULL, c->K, c->A, b, nr, res);
            for (int r = 0; r < nr; r++) c->y[(size_t)(b + r) * c->N + n] = res[r];
        }
    }
}

/* Q4_0 / Q5_0 weights enter the fused kernels as q + 128 with q = value + 8 (16): their
 * activation block sums carry the offset -(128 + 8) * sum (or 144). A copy of A with those sums. */
static const act_t *act_offset_variant(int qt, const act_t *A, int B, int K, act_t *A2, int slot) {
    if (qt != ER_Q4_0 && qt != ER_Q5_0) return A;
    const size_t m = (size_t)B * K / 4;
    int32_t *xn = scratch(slot, m * 4);
    if (!xn) return NULL;
    const int sh = qt == ER_Q4_0 ? 4 : 3;
    for (size_t i = 0; i < m; i++) xn[i] = A->n[i] + (A->n[i] >> sh);
    *A2 = *A;
    A2->n = xn;
    return A2;
}

static int par_worth(int64_t N, int K, int B) { return nthreads() > 1 && N * K * (B < 4 ? B : 4) >= (1 << 19); }

static int matmul_q_act(int qt, const uint8_t *W, int64_t row_bytes, int N, int K, const act_t *A, int B, float *y) {
    decode_fn dec;
    core_fn core;
    pick_q(&dec, &core);
    const int nt = nthreads();
    const int par = par_worth(N, K, B);
    int err = 0;
    const fused_fn fz = use_fused(qt, B) ? pick_fused(qt) : NULL;
    if (fz) {
        act_t A2;
        if (!(A = act_offset_variant(qt, A, B, K, &A2, 8))) return -2;
        if (!par) {
            fused_rows(fz, W, row_bytes, N, K, A, B, y, 0, N);
            return 0;
        }
        fused_ctx_t c = {fz, W, row_bytes, N, K, A, B, y};
        pool_run(fused_task, &c, N, nt, 16);
        return 0;
    }
    if (matmul_gemm(qt, W, row_bytes, N, K, A, B, y, &err)) return err;
    rows_ctx_t c = {qt, W, row_bytes, N, K, A, B, y, dec, core, 0, 0, 0};
    for (int b0 = 0; b0 < B; b0 += BTILE) {
        c.b0 = b0;
        c.b1 = b0 + BTILE < B ? b0 + BTILE : B;
        pool_run(rows_task, &c, N, par ? nt : 1, 8);
    }
    return c.err;
}

/* ---- several matrices over the same small batch: one activation quantization, one pool job */

#define ER_MULTI_MAX 4
typedef struct {
    int nm, K, B;
    int start[ER_MULTI_MAX + 1]; /* matrix m owns job rows [start[m], start[m+1]) */
    fused_fn fz[ER_MULTI_MAX];
    const uint8_t *W[ER_MULTI_MAX];
    int64_t rb[ER_MULTI_MAX];
    int N[ER_MULTI_MAX];
    float *y[ER_MULTI_MAX];
    const act_t *A[ER_MULTI_MAX];
} multi_ctx_t;

static void multi_task(void *p, int n0, int n1) {
    const multi_ctx_t *c = p;
    for (int m = 0; m < c->nm; m++) {
        const int lo = n0 > c->start[m] ? n0 : c->start[m], hi = n1 < c->start[m + 1] ? n1 : c->start[m + 1];
        if (lo < hi)
            fused_rows(c->fz[m], c->W[m], c->rb[m], c->N[m], c->K, c->A[m], c->B, c->y[m], lo - c->start[m],
                       hi - c->start[m]);
    }
}

/* y[m] = x @ W[m]^T for nm <= 4 matrices with the same K (e.g. Q, K and V). Batches the fused
 * kernels take run as one job; otherwise one matmul each. */
static int matmul_multi(int nm, const int *qt, const void *const *W, const int64_t *rb, const int *N, int K,
                        const float *x, int B, float *const *y) {
    if (g_isa < 0) detect_isa();
    int ok = nm >= 1 && nm <= ER_MULTI_MAX, need32 = 0, needk = 0;
    for (int m = 0; ok && m < nm; m++) {
        const int bs = block_size(qt[m]);
        ok = bs && !is_float_type(qt[m]) && K % bs == 0 && use_fused(qt[m], B);
        if (is_kquant(qt[m])) needk = 1; else need32 = 1;
    }
    if (!ok) {
        for (int m = 0; m < nm; m++) {
            const int rc = er_matmul(qt[m], W[m], rb[m], N[m], K, x, B, y[m]);
            if (rc) return rc;
        }
        return 0;
    }
    act_t A, A4, A5;
    const act_t *A4p = NULL, *A5p = NULL;
    if (act_alloc(&A, B, K, need32, needk)) return -2;
    act_quantize(&A, x, B, K);
    multi_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.nm = nm;
    c.K = K;
    c.B = B;
    for (int m = 0; m < nm; m++) {
        c.fz[m] = pick_fused(qt[m]);
        c.W[m] = W[m];
        c.rb[m] = rb[m];
        c.N[m] = N[m];
        c.y[m] = y[m];
        /* Q4_0 / Q5_0: one offset copy per type, made once and shared by its matrices */
        if (qt[m] == ER_Q4_0) c.A[m] = A4p = A4p ? A4p : act_offset_variant(qt[m], &A, B, K, &A4, 8);
        else if (qt[m] == ER_Q5_0) c.A[m] = A5p = A5p ? A5p : act_offset_variant(qt[m], &A, B, K, &A5, 10);
        else c.A[m] = &A;
        if (!c.A[m]) return -2;
        c.start[m + 1] = c.start[m] + N[m];
    }
    const int total = c.start[nm];
    if (!par_worth(total, K, B)) multi_task(&c, 0, total);
    else pool_run(multi_task, &c, total, nthreads(), 16);
    return 0;
}

/* ---------------------------------------------------- float matmul */

AI float fw_scalar(int qt, const uint8_t *row, int k) {
    if (qt == ER_F32) { float f; memcpy(&f, row + 4 * (size_t)k, 4); return f; }
    if (qt == ER_F16) return h2f(rd16(row + 2 * (size_t)k));
    return bf2f(rd16(row + 2 * (size_t)k));
}

typedef void (*fcore_fn)(int, const uint8_t *, int, const float *, int, float *);

static void fcore_scalar(int qt, const uint8_t *row, int K, const float *x, int nr, float *res) {
    for (int r = 0; r < nr; r++) res[r] = 0.f;
    for (int k = 0; k < K; k++) {
        const float wv = fw_scalar(qt, row, k);
        for (int r = 0; r < nr; r++) res[r] += wv * x[(size_t)r * K + k];
    }
}

#ifdef ER_X86
T_AVX2 AI __m256 fload8(int qt, const uint8_t *row, int k) {
    if (qt == ER_F32) return _mm256_loadu_ps((const float *)row + k);
    const __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k));
    if (qt == ER_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

T_AVX2 AI void fcore_avx2_nr(int qt, const uint8_t *row, int K, const float *x, int NR, float *res) {
    __m256 acc[4], acc2[4];
    for (int r = 0; r < NR; r++) acc[r] = acc2[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = fload8(qt, row, k), w1 = fload8(qt, row, k + 8);
        for (int r = 0; r < NR; r++) {
            acc[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)r * K + k), acc[r]);
            acc2[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)r * K + k + 8), acc2[r]);
        }
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 wv = fload8(qt, row, k);
        for (int r = 0; r < NR; r++) acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)r * K + k), acc[r]);
    }
    for (int r = 0; r < NR; r++) {
        float t = hsum256(_mm256_add_ps(acc[r], acc2[r]));
        for (int kk = k; kk < K; kk++) t += fw_scalar(qt, row, kk) * x[(size_t)r * K + kk];
        res[r] = t;
    }
}

T_AVX2 static void fcore_avx2(int qt, const uint8_t *row, int K, const float *x, int nr, float *res) {
    switch (qt * 8 + nr) {
#define FC(T, R) case T * 8 + R: fcore_avx2_nr(T, row, K, x, R, res); break;
    FC(ER_F32, 1) FC(ER_F32, 2) FC(ER_F32, 3) FC(ER_F32, 4)
    FC(ER_F16, 1) FC(ER_F16, 2) FC(ER_F16, 3) FC(ER_F16, 4)
    FC(ER_BF16, 1) FC(ER_BF16, 2) FC(ER_BF16, 3) FC(ER_BF16, 4)
#undef FC
    default: fcore_scalar(qt, row, K, x, nr, res);
    }
}

T_V512 AI __m512 fload16(int qt, const uint8_t *row, int k, __mmask16 m) {
    if (qt == ER_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)k);
    if (qt == ER_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

T_V512 AI void fcore_v512_nr(int qt, const uint8_t *row, int K, const float *x, int NR, float *res) {
    __m512 acc[4], acc2[4];
    for (int r = 0; r < NR; r++) acc[r] = acc2[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = fload16(qt, row, k, 0xFFFF), w1 = fload16(qt, row, k + 16, 0xFFFF);
        for (int r = 0; r < NR; r++) {
            acc[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + (size_t)r * K + k), acc[r]);
            acc2[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + (size_t)r * K + k + 16), acc2[r]);
        }
    }
    for (; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        const __m512 wv = fload16(qt, row, k, m);
        for (int r = 0; r < NR; r++)
            acc[r] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (size_t)r * K + k), acc[r]);
    }
    for (int r = 0; r < NR; r++) res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
}

T_V512 static void fcore_v512(int qt, const uint8_t *row, int K, const float *x, int nr, float *res) {
    switch (qt * 8 + nr) {
#define FC(T, R) case T * 8 + R: fcore_v512_nr(T, row, K, x, R, res); break;
    FC(ER_F32, 1) FC(ER_F32, 2) FC(ER_F32, 3) FC(ER_F32, 4)
    FC(ER_F16, 1) FC(ER_F16, 2) FC(ER_F16, 3) FC(ER_F16, 4)
    FC(ER_BF16, 1) FC(ER_BF16, 2) FC(ER_BF16, 3) FC(ER_BF16, 4)
#undef FC
    default: fcore_scalar(qt, row, K, x, nr, res);
    }
}
#endif

typedef struct {
    fcore_fn core;
    int qt;
    const uint8_t *W;
    int64_t row_bytes;
    int N, K;
    const float *x;
    int B;
    float *y;
} fmat_ctx_t;

static void fmat_task(void *p, int n0, int n1) {
    const fmat_ctx_t *c = p;
    for (int n = n0; n < n1; n++) {
        float res[4];
        for (int b = 0; b < c->B; b += 4) {
            const int nr = c->B - b < 4 ? c->B - b : 4;
            c->core(c->qt, c->W + (size_t)n * c->row_bytes, c->K, c->x + (size_t)b * c->K, nr, res);
            for (int r = 0; r < nr; r++) c->y[(size_t)(b + r) * c->N + n] = res[r];
        }
    }
}

static int matmul_f(int qt, const uint8_t *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y) {
    if (g_isa < 0) detect_isa();
    fcore_fn core = fcore_scalar;
#ifdef ER_X86
    if (g_isa >= ISA_AVX2) core = fcore_avx2;
    if (g_isa >= ISA_AVX512VNNI) core = fcore_v512;
#endif
    const int nt = nthreads();
    const int par = nt > 1 && (int64_t)N * K * (B < 4 ? B : 4) >= (1 << 19);
    const int bt = 16;
    for (int b0 = 0; b0 < B; b0 += bt) {
        const int nb = B - b0 < bt ? B - b0 : bt;
        fmat_ctx_t c = {core, qt, W, row_bytes, N, K, x + (size_t)b0 * K, nb, y + (size_t)b0 * N};
        pool_run(fmat_task, &c, N, par ? nt : 1, 16);
    }
    return 0;
}

/* y[B,N] = x[B,K] @ W^T ; W rows are row_bytes apart. Returns 0 on success. */
static int matmul_impl(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y) {
    if (g_isa < 0) detect_isa();
    const int bs = block_size(qt);
    if (!bs) return -1;
    if (K % bs) return -3;
    if (is_float_type(qt)) return matmul_f(qt, (const uint8_t *)W, row_bytes, N, K, x, B, y);
    act_t A;
    const int k = wants_kact(qt, B);
    if (act_alloc(&A, B, K, !k, k)) { act_free(&A); return -2; }
    A.g256 = is_kquant(qt); /* same rounding as the fused K-quant kernels: batch-size invariant */
    act_quantize(&A, x, B, K);
    int rc = matmul_q_act(qt, (const uint8_t *)W, row_bytes, N, K, &A, B, y);
    act_free(&A);
    return rc;
}

typedef struct {
    int qt;
    const uint8_t *W;
    int64_t row_bytes;
    int K;
    const int64_t *ids;
    float *out;
    decode_fn dec;
    int err;
} getrows_ctx_t;

static void getrows_task(void *p, int t0, int t1) {
    getrows_ctx_t *c = p;
    const int K = c->K;
    int8_t *wq = NULL;
    float *wl = NULL, *mw = NULL;
    if (!is_float_type(c->qt) && row_bufs(K, &wq, &wl, &mw)) { c->err = -2; return; }
    for (int t = t0; t < t1; t++) {
        const uint8_t *row = c->W + (size_t)c->ids[t] * c->row_bytes;
        float *o = c->out + (size_t)t * K;
        if (is_float_type(c->qt)) {
            for (int k = 0; k < K; k++) o[k] = fw_scalar(c->qt, row, k);
        } else {
            const int has_m = c->dec(c->qt, row, K, wq, wl, mw);
            for (int k = 0; k < K; k++) o[k] = (float)wq[k] * wl[k >> 2] + (has_m ? mw[k >> 4] : 0.f);
        }
    }
}

/* out[T,K] = dequantized rows ids of W */
static int get_rows_impl(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out) {
    if (g_isa < 0) detect_isa();
    const int bs = block_size(qt);
    if (!bs) return -1;
    if (K % bs) return -3;
    decode_fn dec;
    core_fn core;
    pick_q(&dec, &core);
    (void)core;
    const int nt = nthreads();
    getrows_ctx_t c = {qt, (const uint8_t *)W, row_bytes, K, ids, out, dec, 0};
    pool_run(getrows_task, &c, T, nt > 1 && (int64_t)T * K >= (1 << 18) ? nt : 1, 4);
    return c.err;
}

/* ------------------------------------------------------------ light ops */

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

/* exp(x) = 2^n * e^r, n = round(x / ln2), r = x - n ln2 (ln2 split in two for precision), e^r by a
 * degree-7 polynomial; shared by the scalar and the SIMD versions (attn_block.h) */
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

#if defined(ER_X86)
#define ER_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("finite-math-only")))
#else
#define ER_CLONES
#endif

ER_CLONES static void act_gate_range(const float *g, const float *u, float *out, int64_t i0, int64_t i1, int act) {
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

/* gate and up rows [n0, n1) of a small batch, then act(gate) * up over them: one pool job */
typedef struct {
    fused_fn fg, fu;
    const uint8_t *Wg, *Wu;
    int64_t rbg, rbu;
    int F, K, B, act;
    const act_t *Ag, *Au;
    float *g, *u;
} gu_ctx_t;

static void gu_task(void *p, int n0, int n1) {
    const gu_ctx_t *c = p;
    fused_rows(c->fg, c->Wg, c->rbg, c->F, c->K, c->Ag, c->B, c->g, n0, n1);
    fused_rows(c->fu, c->Wu, c->rbu, c->F, c->K, c->Au, c->B, c->u, n0, n1);
    for (int b = 0; b < c->B; b++) {
        float *g = c->g + (size_t)b * c->F;
        act_gate_range(g, c->u + (size_t)b * c->F, g, n0, n1, c->act);
    }
}

/* out = x + post(down(act(gate(n)) * up(n))), n = rms_norm(x) * norm_w, post = rms_norm * post_norm when
 * given (Gemma).  x, out: (B, D); gate/up: (F, D); down: (D, F) */
static int ffn_impl(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
                    const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
                    const float *post_norm, float *out) {
    if (g_isa < 0) detect_isa();
    int rc = 0;
    float *nx = scratch(13, sizeof(float) * (size_t)B * D);
    float *g = scratch(14, sizeof(float) * (size_t)B * F);
    float *u = scratch(15, sizeof(float) * (size_t)B * F);
    float *dn = scratch(16, sizeof(float) * (size_t)B * D);
    if (!nx || !g || !u || !dn) { rc = -2; goto done; }
    er_rms_norm(x, norm_w, nx, B, D, eps);
    const int quant = !is_float_type(qt_g) && !is_float_type(qt_u) && block_size(qt_g) && block_size(qt_u) &&
                      D % block_size(qt_g) == 0 && D % block_size(qt_u) == 0;
    if (quant && use_fused(qt_g, B) && use_fused(qt_u, B)) {
        act_t A, A4, A5;
        const int kg = is_kquant(qt_g), ku = is_kquant(qt_u);
        if (act_alloc(&A, B, D, !kg || !ku, kg || ku)) { rc = -2; goto done; }
        act_quantize(&A, nx, B, D);
        gu_ctx_t c = {pick_fused(qt_g), pick_fused(qt_u), Wg, Wu, rb_g, rb_u, F, D, B, act,
                      act_offset_variant(qt_g, &A, B, D, &A4, 8), NULL, g, u};
        c.Au = qt_u == qt_g ? c.Ag : act_offset_variant(qt_u, &A, B, D, &A5, 10); /* gate and up share a type */
        if (!c.Ag || !c.Au) { rc = -2; goto done; }
        if (par_worth(2 * (int64_t)F, D, B)) pool_run(gu_task, &c, F, nthreads(), 16);
        else gu_task(&c, 0, F);
    } else {
        if (quant) {
            act_t A;
            const int kg = wants_kact(qt_g, B), ku = wants_kact(qt_u, B);
            if (act_alloc(&A, B, D, !kg || !ku, kg || ku)) { act_free(&A); rc = -2; goto done; }
            A.g256 = is_kquant(qt_g) && is_kquant(qt_u);
            act_quantize(&A, nx, B, D);
            rc = matmul_q_act(qt_g, Wg, rb_g, F, D, &A, B, g);
            if (!rc) rc = matmul_q_act(qt_u, Wu, rb_u, F, D, &A, B, u);
            act_free(&A);
        } else {
            rc = er_matmul(qt_g, Wg, rb_g, F, D, nx, B, g);
            if (!rc) rc = er_matmul(qt_u, Wu, rb_u, F, D, nx, B, u);
        }
        if (rc) goto done;
        er_act_gate(g, u, g, (int64_t)B * F, act);
    }
    rc = er_matmul(qt_d, Wd, rb_d, D, F, g, B, dn);
    if (rc) goto done;
    if (post_norm) er_rms_norm(dn, post_norm, dn, B, D, eps);
    for (int64_t i = 0; i < (int64_t)B * D; i++) out[i] = x[i] + dn[i];
done:
    return rc;
}

#include "attn_block.h"

ER_API int er_matmul(int qt, const void *W, int64_t row_bytes, int N, int K, const float *x, int B, float *y) {
    API_TIMED(matmul_impl(qt, W, row_bytes, N, K, x, B, y));
}
ER_API int er_get_rows(int qt, const void *W, int64_t row_bytes, int K, const int64_t *ids, int T, float *out) {
    API_TIMED(get_rows_impl(qt, W, row_bytes, K, ids, T, out));
}
ER_API int er_ffn(const float *x, const float *norm_w, float eps, int qt_g, const void *Wg, int64_t rb_g, int qt_u,
                  const void *Wu, int64_t rb_u, int qt_d, const void *Wd, int64_t rb_d, int D, int F, int B, int act,
                  float *out) {
    API_TIMED(ffn_impl(x, norm_w, eps, qt_g, Wg, rb_g, qt_u, Wu, rb_u, qt_d, Wd, rb_d, D, F, B, act, NULL, out));
}
