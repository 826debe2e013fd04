/*
 * edgerun native kernels: the thread pool, per-thread scratch buffers and aligned allocation.
 *
 * A small persistent pool shared by all kernels. Work is split into chunks claimed with one atomic
 * (generation << 32 | next chunk); the calling thread takes part, and a call returns as soon as
 * every chunk is done -- a worker that has not been scheduled yet (busy desktop, oversubscribed
 * cores) is simply not waited for, unlike a fork-join barrier. Workers spin briefly after a job,
 * then sleep on a condition variable.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#ifdef ER_X86
#include <immintrin.h>
#endif

void *amalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) & ~(size_t)63 : 64)) return NULL;
    return p;
}

static __thread void *t_scratch[ER_SLOTS];
static __thread size_t t_scratch_n[ER_SLOTS];

void *scratch(int slot, size_t n) {
    if (n > t_scratch_n[slot]) {
        free(t_scratch[slot]);
        t_scratch_n[slot] = 0;
        t_scratch[slot] = amalloc(n + 256);
        if (t_scratch[slot]) t_scratch_n[slot] = n;
    }
    return t_scratch[slot];
}

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
static _Atomic long g_pool_jobs, g_pool_worker_chunks, g_pool_sleeps;

AI void cpu_relax(void) {
#ifdef ER_X86
    _mm_pause();
#endif
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


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
void pool_run(task_fn fn, void *ctx, int n, int nt, int min_chunk) {
    if (nt > ER_MAX_WORKERS + 1) nt = ER_MAX_WORKERS + 1;
    if (!er_tune.pool) nt = 1;
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

ER_API int er_set_pool(int on) { int old = er_tune.pool; er_tune.pool = on != 0; return old; }

static int g_threads = 0;

int nthreads(void) {
    if (g_threads <= 0) {
        g_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (g_threads < 1) g_threads = 1;
    }
    return g_threads;
}

ER_API void er_set_threads(int n) { g_threads = n > 0 ? n : 0; nthreads(); }
ER_API int er_get_threads(void) { return nthreads(); }
