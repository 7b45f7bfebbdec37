// AVX2 helpers shared by the matrix kernels (gemv.c, gemm_small.c, lowp.c).
// One definition: the 8-lane reduction is part of each kernel's result, and
// the decode, few-row and reduced-precision kernels must give the same bits.
#ifndef LB_SIMD256_H
#define LB_SIMD256_H

#if defined(__x86_64__)
#include <immintrin.h>
#include <stddef.h>

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
// W rows [r, r + R) × x rows [0, G) (R ≤ 6, G ≤ 4, R·G ≤ 12; both
// compile-time constants where it is called): y[g, r + i] (+)= row i's sum,
// 8 lanes of fused multiply-adds over c in c order (a masked tail), then
// lb_hsum256. The one order of the AVX2 rows kernels (gemv.c, gemm_small.c),
// whatever their tiles.
LB_T256_INLINE void lb_rows_tile256(float *y, int ldy, const float *x, int ldx, int G, int R, const float *W, int ldw,
                                    int C, int r, int beta0) {
    __m256 a[6][4];
    const float *w = W + (size_t)r * ldw;
#pragma GCC unroll 6
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) a[i][g] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 wv[6];
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) wv[i] = _mm256_loadu_ps(w + (size_t)i * ldw + c);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)g * ldx + c);
#pragma GCC unroll 6
            for (int i = 0; i < R; i++) a[i][g] = _mm256_fmadd_ps(wv[i], xv, a[i][g]);
        }
    }
    if (c < C) {
        __m256i lm = lb_mask8(C - c);
        __m256 wv[6];
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) wv[i] = _mm256_maskload_ps(w + (size_t)i * ldw + c, lm);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            __m256 xv = _mm256_maskload_ps(x + (size_t)g * ldx + c, lm);
#pragma GCC unroll 6
            for (int i = 0; i < R; i++) a[i][g] = _mm256_fmadd_ps(wv[i], xv, a[i][g]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) {
            float s = lb_hsum256(a[i][g]);
            float *out = y + (size_t)g * ldy + r + i;
            *out = beta0 ? s : *out + s;
        }
}

#endif

#endif
