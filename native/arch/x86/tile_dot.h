/*
 * edgerun native kernels, internal: the inner step the two 16-row tile families share on AVX-512
 * VNNI (gather16.c decodes its tile from the on-disk rows, repack.c reads it from the repacked
 * copy). Include it only after an AVX-512 `#pragma GCC target`.
 */
#ifndef EDGERUN_X86_TILE_DOT_H
#define EDGERUN_X86_TILE_DOT_H

#include "x86.h"

/* Block b of a 16-row tile against B activation rows: w[8] hold its 16 x 32 weights as unsigned
 * bytes (value + off), dw its 16 scales; facc[r] += the scaled products of row r. The integer
 * accumulator starts at -off * (sum of the activation block), so it holds the exact signed dot
 * product before the float scaling. Shared by gather16 and the repacked kernels. */
AI void tile_rows(const __m512i *w, __m512 dw, const int8_t *aq, const float *al, const int32_t *sq, int K,
                  int b, int off, const int B, __m512 *facc) {
    const int nb = K / 32;
#pragma GCC unroll 8
    for (int r = 0; r < B; r++) {
        const int8_t *q = aq + (size_t)r * K + 32 * b;
        __m512i acc = _mm512_set1_epi32(-off * sq[(size_t)r * nb + b]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            int32_t a4;
            memcpy(&a4, q + 4 * j, 4);
            acc = _mm512_dpbusd_epi32(acc, w[j], _mm512_set1_epi32(a4));
        }
        const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(al[(size_t)r * K / 4 + 8 * b]));
        facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), sc, facc[r]);
    }
}

#endif
