/* ggml block layouts (on-disk GGUF format) used by the edgerun native kernels. */
#ifndef EDGERUN_BLOCKS_H
#define EDGERUN_BLOCKS_H
#include <stdint.h>

typedef uint16_t er_f16;

/* gguf.GGMLQuantizationType ids */
enum {
    ER_F32 = 0, ER_F16 = 1, ER_Q4_0 = 2, ER_Q4_1 = 3, ER_Q5_0 = 6, ER_Q5_1 = 7, ER_Q8_0 = 8,
    ER_Q4_K = 12, ER_Q5_K = 13, ER_Q6_K = 14, ER_BF16 = 30,
};

#define ER_QK 32   /* legacy block size */
#define ER_QKK 256 /* k-quant super-block size */

typedef struct { er_f16 d; uint8_t qs[16]; } block_q4_0;
typedef struct { er_f16 d; er_f16 m; uint8_t qs[16]; } block_q4_1;
typedef struct { er_f16 d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;
typedef struct { er_f16 d; er_f16 m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;
typedef struct { er_f16 d; int8_t qs[32]; } block_q8_0;
typedef struct { er_f16 d; er_f16 dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;
typedef struct { er_f16 d; er_f16 dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } block_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; er_f16 d; } block_q6_K;

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 size");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 size");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 size");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 size");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 size");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K size");

#endif
