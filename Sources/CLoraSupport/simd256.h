// AVX2 helpers shared by the matrix kernels (gemv.c, gemm_small.c, lowp.c).
// One definition: the 8-lane reduction is part of each kernel's result, and
// the decode, few-row and reduced-precision kernels must give the same bits.
#ifndef LB_SIMD256_H
#define LB_SIMD256_H

#if defined(__x86_64__)
#include <immintrin.h>

#define LB_T256_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

// Lanes [0, n) set (n = 0…8): the mask of a last, partial vector.
LB_T256_INLINE __m256i lb_mask8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The sum of the 8 lanes by a fixed tree: (lo + hi), then pairs, then the last two.
LB_T256_INLINE float lb_hsum256(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#endif
