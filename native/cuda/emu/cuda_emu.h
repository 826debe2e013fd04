// cuda_emu.h: run the CUDA C kernels of native/cuda on the host, one GPU thread per fiber.
//
// Included (g++ -include) in front of a kernel source by edgerun/backends/cuda_emu.py, which also
// appends one launch entry per kernel. Execution model, chosen so that the bugs a GPU would punish
// are caught here too:
// - the blocks of a grid run one after another on the calling OS thread;
// - the threads of a block are fibers with small stacks, run round-robin; a fiber runs until it
//   reaches a synchronisation point (a block barrier or a warp collective) or exits;
// - __syncthreads is a block barrier identified by its call site: it fails (with the kernel,
//   block and threads named) when live threads wait at different barriers or when some threads
//   exited while others wait;
// - __shfl_*_sync / __ballot_sync / __syncwarp exchange values through a per-warp buffer once
//   every lane named by the mask has arrived at the same call site; a mask naming lanes a partial
//   warp does not have, lanes that exited or lanes waiting elsewhere is an error;
// - __shared__ variables are static storage (per block, since blocks run in turn; launches are
//   serialized by the caller); dynamic shared memory is refused.
// Errors never abort the process: the launch returns nonzero and emu_error() says why.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)

// ------------------------------------------------------------------------------ vector types
struct dim3 { unsigned x = 1, y = 1, z = 1; };
typedef dim3 uint3;
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(4) char4 { signed char x, y, z, w; };
struct alignas(4) uchar4 { unsigned char x, y, z, w; };
static const int warpSize = 32;

// Plain statics, not thread_local: launches are serialized (edgerun/backends/cuda_emu.py runs the
// queue under one lock), and TLS in a dlopen'ed library costs a __tls_get_addr call per access.
static uint3 threadIdx, blockIdx, blockDim, gridDim;

// ------------------------------------------------------------------------------ math built-ins
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline float min(float a, float b) { return fminf(a, b); }
// glibc declares __expf/__logf itself: the CUDA intrinsics get names of their own
static inline float emu_expf(float x) { return expf(x); }
static inline float emu_logf(float x) { return logf(x); }
#define __expf emu_expf
#define __logf emu_logf
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
template <class T> static inline T __ldg(const T* p) { return *p; }
// int8x4 dot product with accumulate (signed), as the dp4a instruction
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
static inline int __vsubss4(int a, int b) {
    int r = 0;
    for (int i = 0; i < 4; i++) {
        int v = (int)(signed char)(a >> (8 * i)) - (int)(signed char)(b >> (8 * i));
        v = v < -128 ? -128 : v > 127 ? 127 : v;
        r |= (v & 0xff) << (8 * i);
    }
    return r;
}

// atomics: blocks run one at a time, but use real atomics so that a threaded scheduler stays right
template <class T> static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline float atomicAdd(float* p, float v) {
    float old = *p, nv;
    do {
        nv = old + v;
    } while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <class T> static inline T atomicMax(T* p, T v) {
    T old = *p;
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
template <class T> static inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <class T> static inline T atomicCAS(T* p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}

// ------------------------------------------------------------------------------ half types
// IEEE binary16 by bit manipulation (round to nearest even), as cvt.rn.f16.f32 / cvt.f32.f16 do
static inline float emu_half_to_float(uint16_t h) {
    const unsigned s = (unsigned)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
    if (e == 0) return __uint_as_float(s) + (s ? -1.0f : 1.0f) * ldexpf((float)m, -24);
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
    return __uint_as_float(s | ((e + 112) << 23) | (m << 13));
}
static inline uint16_t emu_float_to_half(float f) {
    const unsigned u = __float_as_uint(f), s = (u >> 16) & 0x8000;
    const unsigned a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(s | 0x7e00 | ((a >> 13) & 0x3ff));  // NaN
    if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00);  // rounds to inf
    if (a < 0x38800000u) {  // subnormal half (or zero): scale so the rounding happens in float
        const float r = __uint_as_float(a) * 16777216.0f;  // 2^24: units of the smallest subnormal
        return (uint16_t)(s | (unsigned)nearbyintf(r));
    }
    const unsigned m = a + 0xc8000fffu + ((a >> 13) & 1);  // rebias exponent, round to nearest even
    return (uint16_t)(s | (m >> 13));
}
struct __half {
    uint16_t x;
};
static inline float __half2float(__half h) { return emu_half_to_float(h.x); }
static inline __half __float2half(float f) { return __half{emu_float_to_half(f)}; }
static inline __half __float2half_rn(float f) { return __half{emu_float_to_half(f)}; }

// ------------------------------------------------------------------------------ the scheduler
namespace emu {

enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum WarpOp { SHFL_XOR, SHFL_IDX, SHFL_DOWN, SHFL_UP, BALLOT, SYNCWARP };
static const char* const WARP_OP_NAMES[] = {"__shfl_xor_sync", "__shfl_sync", "__shfl_down_sync",
                                             "__shfl_up_sync", "__ballot_sync", "__syncwarp"};
static const size_t STACK = 32 << 10;
static const int MAX_THREADS = 1024;

struct Thread {
    void* sp;
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    int state;
    unsigned tx, ty, tz;  // threadIdx, precomputed (divisions per switch were measurable)
    const char* file;
    int line;
    int op, arg, width;
    unsigned mask;
    uint64_t val, res;
};

struct Launch {
    const char* kernel;
    void (*body)(void**);
    void** args;
    int n;  // threads per block
    Thread* th;
    int cur;
    void* sched_sp;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
#endif
    bool failed;
};

static Launch* L;
static char err[2048];
static char* stacks;
static Thread* threads;

#if defined(__x86_64__)
// Callee-saved registers only (kernels never change the FP control words); 16-byte aligned entry
// for new fibers.
extern "C" void emu_switch(void** save, void* to) __attribute__((visibility("hidden")));
asm(R"(
    .text
    .p2align 4
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#endif

static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char* fmt, ...) {
    if (L->failed) return;
    L->failed = true;
    const int n = snprintf(err, sizeof err, "kernel %s, block (%u,%u,%u) of grid (%u,%u,%u), %d threads: ",
                           L->kernel, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, L->n);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, sizeof err - n, fmt, ap);
    va_end(ap);
}

// "0-31,64-95" for the threads whose flag is set
static const char* ranges(const bool* sel, int n, char* out, size_t cap) {
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < n && k + 24 < cap;) {
        if (!sel[i]) { i++; continue; }
        int j = i;
        while (j + 1 < n && sel[j + 1]) j++;
        k += snprintf(out + k, cap - k, k ? ",%d" : "%d", i);
        if (j > i) k += snprintf(out + k, cap - k, "-%d", j);
        i = j + 1;
    }
    return out;
}

static void fiber_entry() {
    Thread& t = L->th[L->cur];
    L->body(L->args);
    t.state = DONE;
#if defined(__x86_64__)
    emu_switch(&t.sp, L->sched_sp);
#else
    swapcontext(&t.uc, &L->sched_uc);
#endif
    __builtin_unreachable();
}

// Stack tops are staggered by 64-byte lines: equal offsets modulo 4 KiB would put the hot top of
// every fiber's stack in the same L1 set (measured: 3x slower switches).
static void fiber_init(Thread& t, char* stack, int i) {
#if defined(__x86_64__)
    uint64_t* top = (uint64_t*)(((uintptr_t)stack + STACK - 64 * (i % 61)) & ~(uintptr_t)15);
    top[-1] = 0;  // fake return address of fiber_entry (never returns)
    top[-2] = (uint64_t)(uintptr_t)&fiber_entry;
    for (int r = 3; r <= 8; r++) top[-r] = 0;  // rbp rbx r12-r15
    t.sp = &top[-8];
#else
    getcontext(&t.uc);
    t.uc.uc_stack.ss_sp = stack;
    t.uc.uc_stack.ss_size = STACK;
    t.uc.uc_link = nullptr;
    makecontext(&t.uc, (void (*)())fiber_entry, 0);
#endif
    t.state = READY;
}

static inline void to_fiber(int i) {
    L->cur = i;
    const Thread& t = L->th[i];
    threadIdx.x = t.tx;
    threadIdx.y = t.ty;
    threadIdx.z = t.tz;
#if defined(__x86_64__)
    emu_switch(&L->sched_sp, L->th[i].sp);
#else
    swapcontext(&L->sched_uc, &L->th[i].uc);
#endif
}

static inline void yield() {
    Thread& t = L->th[L->cur];
#if defined(__x86_64__)
    emu_switch(&t.sp, L->sched_sp);
#else
    swapcontext(&t.uc, &L->sched_uc);
#endif
}

static inline bool same_site(const Thread& a, const Thread& b) {
    return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

static inline void barrier(const char* file, int line) {
    Thread& t = L->th[L->cur];
    t.state = AT_BARRIER;
    t.file = file;
    t.line = line;
    yield();
}

template <class T>
static inline T warp_op(int op, unsigned mask, T v, int arg, int width, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
    Thread& t = L->th[L->cur];
    t.state = AT_WARP;
    t.op = op;
    t.mask = mask;
    t.arg = arg;
    t.width = width;
    t.file = file;
    t.line = line;
    t.val = 0;
    memcpy(&t.val, &v, sizeof(T));
    yield();
    T r;
    memcpy(&r, &t.res, sizeof(T));
    return r;
}

// One warp's pending collective; false (and L->failed) on a misuse.
static bool resolve_warp(int w, bool* progressed) {
    Thread* th = L->th + 32 * w;
    const int lanes = L->n - 32 * w < 32 ? L->n - 32 * w : 32;
    int first = -1;
    for (int i = 0; i < lanes; i++)
        if (th[i].state == AT_WARP) { first = i; break; }
    if (first < 0) return true;
    const Thread& a = th[first];
    const char* name = WARP_OP_NAMES[a.op];
    const uint64_t have = lanes == 32 ? 0xffffffffull : ((1ull << lanes) - 1);
    if (a.width < 1 || a.width > 32 || (a.width & (a.width - 1))) {
        fail("%s at %s:%d: width %d is not a power of 2 up to 32", name, a.file, a.line, a.width);
        return false;
    }
    if ((uint64_t)a.mask & ~have) {
        fail("%s at %s:%d with mask 0x%08x in warp %d, which has only %d lanes (a partial warp: "
             "blockDim is not a multiple of 32)", name, a.file, a.line, a.mask, w, lanes);
        return false;
    }
    for (int i = 0; i < lanes; i++) {
        const Thread& b = th[i];
        const bool named = (a.mask >> i) & 1;
        if (!named) {
            if (b.state == AT_WARP && same_site(a, b)) {
                fail("%s at %s:%d: lane %d of warp %d joins but is not in mask 0x%08x", name, a.file, a.line, i, w,
                     a.mask);
                return false;
            }
            continue;
        }
        if (b.state == DONE) {
            fail("%s at %s:%d in warp %d: lane %d (thread %d) has exited; mask 0x%08x", name, a.file, a.line, w, i,
                 32 * w + i, a.mask);
            return false;
        }
        if (b.state == AT_BARRIER) {
            fail("%s at %s:%d in warp %d: lane %d waits at __syncthreads (line %d) instead", name, a.file, a.line, w,
                 i, b.line);
            return false;
        }
        if (!same_site(a, b) || b.op != a.op) {
            fail("warp %d diverged: lane %d at %s %s:%d, lane %d at %s line %d", w, first, name, a.file, a.line, i,
                 WARP_OP_NAMES[b.op], b.line);
            return false;
        }
    }
    for (int i = 0; i < lanes; i++) {
        Thread& b = th[i];
        if (!((a.mask >> i) & 1)) continue;
        const int width = b.width, li = i & (width - 1), seg = i - li;  // width: a power of 2 (checked)
        int src = i;
        switch (a.op) {
            case SHFL_XOR: src = seg + ((li ^ b.arg) & (width - 1)); if ((li ^ b.arg) >= width) src = i; break;
            case SHFL_IDX: src = seg + (b.arg & (width - 1)); break;
            case SHFL_DOWN: src = li + b.arg < width ? i + b.arg : i; break;
            case SHFL_UP: src = li - b.arg >= 0 ? i - b.arg : i; break;
            default: break;
        }
        if (a.op == BALLOT) {
            uint64_t bits = 0;
            for (int j = 0; j < lanes; j++)
                if (((a.mask >> j) & 1) && th[j].val) bits |= 1ull << j;
            b.res = bits;
        } else if (a.op != SYNCWARP) {
            if (src >= lanes || !((a.mask >> src) & 1)) {
                fail("%s at %s:%d in warp %d: lane %d reads lane %d, which is not in mask 0x%08x", name,
                     a.file, a.line, w, i, src, a.mask);
                return false;
            }
            b.res = th[src].val;
        }
    }
    for (int i = 0; i < lanes; i++)
        if ((a.mask >> i) & 1) th[i].state = READY;
    *progressed = true;
    return true;
}

// All live threads at the same barrier: release them; otherwise say who is where.
static bool resolve_barrier(bool* done) {
    const int n = L->n;
    Thread* th = L->th;
    int first = -1, exited = 0, live = 0;
    for (int i = 0; i < n; i++) {
        if (th[i].state == DONE) { exited++; continue; }
        live++;
        if (first < 0) first = i;
    }
    if (!live) { *done = true; return true; }
    static bool sel[MAX_THREADS];
    char buf[512], buf2[512];
    const Thread& a = th[first];
    if (exited) {
        for (int i = 0; i < n; i++) sel[i] = th[i].state == DONE;
        ranges(sel, n, buf, sizeof buf);
        for (int i = 0; i < n; i++) sel[i] = th[i].state != DONE;
        fail("__syncthreads at %s:%d: threads %s wait while threads %s have exited (barrier not reached by "
             "the whole block)", a.file, a.line, ranges(sel, n, buf2, sizeof buf2), buf);
        return false;
    }
    for (int i = 0; i < n; i++) {
        if (!same_site(th[i], a)) {
            for (int j = 0; j < n; j++) sel[j] = same_site(th[j], a);
            ranges(sel, n, buf, sizeof buf);
            for (int j = 0; j < n; j++) sel[j] = same_site(th[j], th[i]);
            fail("threads reach different barriers: threads %s at __syncthreads %s:%d, threads %s at line %d",
                 buf, a.file, a.line, ranges(sel, n, buf2, sizeof buf2), th[i].line);
            return false;
        }
    }
    for (int i = 0; i < n; i++) th[i].state = READY;
    return true;
}

static bool run_block() {
    const int n = L->n;
    for (int i = 0; i < n; i++) fiber_init(L->th[i], stacks + (size_t)i * STACK, i);

    for (;;) {
        for (int i = 0; i < n; i++) {
            if (L->th[i].state != READY) continue;
            to_fiber(i);
            if (L->failed) return false;
        }
        bool progressed = false;
        for (int w = 0; w < (n + 31) / 32; w++)
            if (!resolve_warp(w, &progressed)) return false;
        if (progressed) continue;
        bool done = false;
        if (!resolve_barrier(&done)) return false;
        if (done) return true;
    }
}

template <class... P, size_t... I>
static void call_impl(void (*f)(P...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(a[I])...);
}
template <class... P> static void call(void (*f)(P...), void** a) { call_impl(f, a, std::index_sequence_for<P...>{}); }
template <class... P> static int n_params(void (*)(P...)) { return (int)sizeof...(P); }
template <class... P> static void param_sizes(void (*)(P...), int* out) {
    const int s[] = {0, (int)sizeof(P)...};
    for (size_t i = 0; i < sizeof...(P); i++) out[i] = s[i + 1];
}

static int launch(const char* kernel, void (*body)(void**), const unsigned* grid, const unsigned* block,
                  unsigned shared, void** args) {
    static Launch l;
    l = Launch{};
    l.kernel = kernel;
    l.body = body;
    l.args = args;
    L = &l;
    err[0] = 0;
    gridDim.x = grid[0]; gridDim.y = grid[1]; gridDim.z = grid[2];
    blockDim.x = block[0]; blockDim.y = block[1]; blockDim.z = block[2];
    blockIdx = dim3{};
    const unsigned long long n = (unsigned long long)block[0] * block[1] * block[2];
    if (!n || n > MAX_THREADS || block[2] > 64) {
        fail("block (%u,%u,%u): 1 to %d threads per block (z <= 64)", block[0], block[1], block[2], MAX_THREADS);
        return 1;
    }
    if (!grid[0] || !grid[1] || !grid[2] || grid[1] > 65535 || grid[2] > 65535) {
        fail("grid (%u,%u,%u): every dimension >= 1, y and z <= 65535", grid[0], grid[1], grid[2]);
        return 1;
    }
    if (shared) {
        fail("%u bytes of dynamic shared memory: the emulator supports static __shared__ only", shared);
        return 1;
    }
    if (!stacks) {
        stacks = (char*)malloc(STACK * MAX_THREADS);
        threads = (Thread*)calloc(MAX_THREADS, sizeof(Thread));
    }
    l.n = (int)n;
    l.th = threads;
    for (int i = 0; i < l.n; i++) {
        threads[i].tx = i % block[0];
        threads[i].ty = (i / block[0]) % block[1];
        threads[i].tz = i / (block[0] * block[1]);
    }
    for (unsigned z = 0; z < grid[2]; z++)
        for (unsigned y = 0; y < grid[1]; y++)
            for (unsigned x = 0; x < grid[0]; x++) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                if (!run_block()) return 1;
            }
    return 0;
}

}  // namespace emu

// ------------------------------------------------------------------------------ device built-ins
static inline void __syncthreads(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { emu::barrier(f, l); }
static inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(),
                              int l = __builtin_LINE()) {
    emu::warp_op<int>(emu::SYNCWARP, mask, 0, 0, 32, f, l);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* f = __builtin_FILE(),
                                int l = __builtin_LINE()) {
    return emu::warp_op<T>(emu::SHFL_XOR, mask, v, lane_mask, width, f, l);
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* f = __builtin_FILE(),
                            int l = __builtin_LINE()) {
    return emu::warp_op<T>(emu::SHFL_IDX, mask, v, src, width, f, l);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, const char* f = __builtin_FILE(),
                                 int l = __builtin_LINE()) {
    return emu::warp_op<T>(emu::SHFL_DOWN, mask, v, (int)d, width, f, l);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, const char* f = __builtin_FILE(),
                               int l = __builtin_LINE()) {
    return emu::warp_op<T>(emu::SHFL_UP, mask, v, (int)d, width, f, l);
}
static inline unsigned __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(),
                                     int l = __builtin_LINE()) {
    return (unsigned)emu::warp_op<int>(emu::BALLOT, mask, pred ? 1 : 0, 0, 32, f, l);
}

extern "C" __attribute__((visibility("default"))) const char* emu_error() { return emu::err; }
