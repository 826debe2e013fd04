/*
 * edgerun native kernels, internal: small intrinsics helpers shared by the x86 ISA files. Include
 * it only after the file's own `#pragma GCC target` (AVX2 at least): the helpers take the target
 * of the file that inlines them.
 */
#ifndef EDGERUN_X86_H
#define EDGERUN_X86_H

#include <immintrin.h>

#include "../../common.h"

AI float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
