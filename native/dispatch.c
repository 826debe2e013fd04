/*
 * edgerun native kernels: ISA detection, the per-ISA kernel tables and the run-time settings.
 *
 * One build holds every ISA's kernels (the files under arch/ carry their own target pragmas); the
 * CPU is asked once with __builtin_cpu_supports, a kernel table is filled for each level up to the
 * detected one, and EDGERUN_ISA=avx2|scalar or er_set_isa() pick a lower table, so one machine
 * runs and tests every path.
 */
#include <pthread.h>

#include "common.h"
#include "repack.h"

er_tuning_t er_tune = {
    .fused = 1,
    .gather16 = 1,
    .pass_rows = 4,
    .pass_b2 = 1,
    .repack = 1,
    .repack_min_b = 2,
    /* 0.5B prefill, 8 x 64 tokens, same process: 64 rows a tile 498 tok/s, 256 KiB 533, 1 MiB 567, more the same */
    .gemm_l2 = 1 << 20,
    .pool = 1,
};

/* Format facts of each type the kernels know (ggml's type_traits): the kernels are filled in by
 * er_fill_generic and the arch fillers. repack_extra_b: Q6_K's repacked kernels from one row more:
 * at 2 rows they ran slower than the row kernels (1536 x 8960: 445 against 381 us), at 4 and 8
 * faster (410 against 545, 610 against 900). */
static const er_type_traits_t TYPE_FACTS[] = {
    {.id = ER_F32, .block = 1, .is_float = 1},
    {.id = ER_F16, .block = 1, .is_float = 1},
    {.id = ER_BF16, .block = 1, .is_float = 1},
    {.id = ER_Q4_0, .block = ER_QK, .vec_dot_type = ER_ACT_Q8_0, .off_shift = 4, .gemm_group = 32,
     .repack_unit_k = 64, .repack_unit_bytes = ER_REPACK_Q4_0_PAIR, .repack_make = repack_make_q4_0},
    {.id = ER_Q4_1, .block = ER_QK, .vec_dot_type = ER_ACT_Q8_0, .gemm_group = 32},
    {.id = ER_Q5_0, .block = ER_QK, .vec_dot_type = ER_ACT_Q8_0, .off_shift = 3, .gemm_group = 32,
     .repack_unit_k = 64, .repack_unit_bytes = ER_REPACK_Q5_0_PAIR, .repack_make = repack_make_q5_0},
    {.id = ER_Q5_1, .block = ER_QK, .vec_dot_type = ER_ACT_Q8_0, .gemm_group = 32},
    {.id = ER_Q8_0, .block = ER_QK, .vec_dot_type = ER_ACT_Q8_0, .gemm_group = 32,
     .repack_unit_k = 64, .repack_unit_bytes = ER_REPACK_Q8_0_PAIR, .repack_make = repack_make_q8_0},
    {.id = ER_Q4_K, .block = ER_QKK, .vec_dot_type = ER_ACT_Q8_K, .gemm_group = 32,
     .repack_unit_k = 256, .repack_unit_bytes = ER_REPACK_Q4_K_TB, .repack_make = repack_make_q4_K},
    {.id = ER_Q5_K, .block = ER_QKK, .vec_dot_type = ER_ACT_Q8_K, .gemm_group = 32},
    {.id = ER_Q6_K, .block = ER_QKK, .vec_dot_type = ER_ACT_Q8_K, .gemm_group = 16, .repack_extra_b = 1,
     .repack_unit_k = 256, .repack_unit_bytes = ER_REPACK_Q6_K_TB, .repack_make = repack_make_q6_K},
};

static er_kernels_t g_tabs[ER_NISA];
static int g_isa_max = ISA_SCALAR;
const er_kernels_t *er_kern_cur = NULL;

static void fill_table(er_kernels_t *k, int isa) {
    memset(k, 0, sizeof(*k));
    k->isa = isa;
    for (size_t i = 0; i < sizeof(TYPE_FACTS) / sizeof(TYPE_FACTS[0]); i++) k->type[TYPE_FACTS[i].id] = TYPE_FACTS[i];
    er_fill_generic(k);
#ifdef ER_X86
    if (isa >= ISA_AVX2) er_fill_avx2(k);
    if (isa >= ISA_AVX512VNNI) {
        er_fill_avx512(k);
        er_fill_gemm_avx512(k);
        er_fill_repack_avx512(k);
        if (__builtin_cpu_supports("avx512bitalg")) er_fill_gather16_avx512(k);
    }
#endif
}

static void detect(void) {
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
    for (int i = 0; i <= isa; i++) fill_table(&g_tabs[i], i);
    const char *e = getenv("EDGERUN_ISA");
    if (e) {
        if (!strcmp(e, "scalar")) isa = ISA_SCALAR;
        else if (!strcmp(e, "avx2") && isa >= ISA_AVX2) isa = ISA_AVX2;
    }
    er_kern_cur = &g_tabs[isa];
}

const er_kernels_t *er_kern_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, detect);
    return er_kern_cur;
}

ER_API int er_isa(void) { return er_kern()->isa; }
ER_API int er_isa_max(void) { er_kern(); return g_isa_max; }
ER_API int er_set_isa(int isa) {
    er_kern();
    if (isa < 0 || isa > g_isa_max) isa = g_isa_max;
    er_kern_cur = &g_tabs[isa];
    return isa;
}

ER_API int er_supports(int qt) { return er_traits(er_kern(), qt) != NULL; }

ER_API int er_set_fused(int on) { int old = er_tune.fused; er_tune.fused = on != 0; return old; }
ER_API int er_set_tile(int on) { int old = er_tune.gather16; er_tune.gather16 = on != 0; return old; }
ER_API int er_set_fw0(int nw) { int old = er_tune.pass_rows; er_tune.pass_rows = nw < 0 ? 0 : nw > 4 ? 4 : nw; return old; }
ER_API int er_set_fw0_b2(int on) { int old = er_tune.pass_b2; er_tune.pass_b2 = on != 0; return old; }
ER_API int er_set_tiles(int on) { int old = er_tune.repack; er_tune.repack = on != 0; return old; }
ER_API int er_set_tiles_min_b(int b) { int old = er_tune.repack_min_b; er_tune.repack_min_b = b < 1 ? 1 : b; return old; }
ER_API int64_t er_set_gemm_l2(int64_t b) { int64_t old = er_tune.gemm_l2; er_tune.gemm_l2 = b; return old; }
ER_API int er_noop(int a) { return a; }
