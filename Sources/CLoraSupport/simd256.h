// AVX2 helpers shared by the matrix kernels (gemv.c, gemm_small.c, lowp.c).
// One definition: the 8-lane reduction is part of each kernel's result, and
// the decode, few-row and reduced-precision kernels must give the same bits.
#ifndef LB_SIMD256_H
#define LB_SIMD256_H

#if defined(__x86_64__)
#include "lora_support.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// The AVX2 level: AVX2, FMA and F16C (lb_cpu_has_avx2_fma checks all three;
// every CPU with the first two has the third).
#define LB_T256_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

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
// 8 weights (n < 8: the first n, the rest 0) from byte p of a weight
// stored as dt, as F32: exact for every dtype (Q8_0: the int8 values, the
// block's scale applied by the caller).
LB_T256_INLINE __m256 lb_wload256(int dt, const char *p, int n) {
    if (dt == LB_DTYPE_F32)
        return n == 8 ? _mm256_loadu_ps((const float *)p) : _mm256_maskload_ps((const float *)p, lb_mask8(n));
    if (dt == LB_DTYPE_Q8_0) {
        int64_t b = 0;
        memcpy(&b, p, (size_t)n);
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b)));
    }
    __m128i h;
    if (n == 8)
        h = _mm_loadu_si128((const __m128i *)p);
    else {
        uint16_t t[8] = {0};
        memcpy(t, p, (size_t)n * 2);
        h = _mm_loadu_si128((const __m128i *)t);
    }
    if (dt == LB_DTYPE_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

// W rows r + i·rs (i < R) × x rows [0, G) (R ≤ 6, G ≤ 4, R·G ≤ 12; dt, R and G
// compile-time constants where it is called): y[g, r + i·rs] (+)= row i's
// sum, 8 lanes of fused multiply-adds over c in c order (a masked tail),
// then lb_hsum256. The one order of the AVX2 rows kernels (gemv.c,
// gemm_small.c, lowp.c), whatever their tiles. W holds values of dtype dt
// (ldw values a row), converted to F32 as they are loaded; for Q8_0 (rows
// layout) d holds each row's F16 block scales, ncb a row, and each weight
// is q · d, as the dequantized matrix holds it.
LB_T256_INLINE void lb_rows_tile256_dt(int dt, float *y, int ldy, const float *x, int ldx, int G, int R, const void *W,
                                       const uint16_t *d, int ncb, int ldw, int C, int r, int rs, int beta0) {
    const size_t es = dt == LB_DTYPE_F32 ? 4 : dt == LB_DTYPE_Q8_0 ? 1 : 2;
    const char *w = (const char *)W + (size_t)r * ldw * es;
    __m256 a[6][4], s[6];
#pragma GCC unroll 6
    for (int i = 0; i < R; i++) {
        s[i] = _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) a[i][g] = _mm256_setzero_ps();
    }
    // Whole vectors, then a last one of C % 8 values: one step of 8 lanes.
#define LB_ROWS_STEP256(n)                                                                                             \
    do {                                                                                                               \
        __m256 wv[6];                                                                                                  \
        if (dt == LB_DTYPE_Q8_0 && c % 32 == 0)                                                                        \
            _Pragma("GCC unroll 6") for (int i = 0; i < R; i++) s[i] =                                                 \
                _mm256_set1_ps(_cvtsh_ss(d[(size_t)(r + i * rs) * ncb + c / 32]));                                     \
        _Pragma("GCC unroll 6") for (int i = 0; i < R; i++) {                                                          \
            wv[i] = lb_wload256(dt, w + ((size_t)i * rs * ldw + c) * es, n);                                           \
            if (dt == LB_DTYPE_Q8_0) wv[i] = _mm256_mul_ps(wv[i], s[i]);                                               \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++) {                                                          \
            const float *xc = x + (size_t)g * ldx + c;                                                                 \
            __m256 xv = n == 8 ? _mm256_loadu_ps(xc) : _mm256_maskload_ps(xc, lb_mask8(n));                            \
            _Pragma("GCC unroll 6") for (int i = 0; i < R; i++) a[i][g] = _mm256_fmadd_ps(wv[i], xv, a[i][g]);         \
        }                                                                                                              \
    } while (0)
    int c = 0;
    for (; c + 8 <= C; c += 8) LB_ROWS_STEP256(8);
    if (c < C) LB_ROWS_STEP256(C - c);
#undef LB_ROWS_STEP256
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) {
            float t = lb_hsum256(a[i][g]);
            float *out = y + (size_t)g * ldy + r + (size_t)i * rs;
            *out = beta0 ? t : *out + t;
        }
}

// One row of x (decode) over W rows [r0, r1): six rows at a time, a sixth
// of the range apart, so each of the six reads its own long run of memory
// (six adjacent rows made runs of one row, 768 bytes for GPT-2's q8_0 LM
// head, too short for the hardware prefetchers); the last 1–5 rows two at
// a time (a constant count keeps the sums in registers). GPT-2's LM head
// on 2 threads (AMD EPYC Zen 2, C microbenchmark, three alternating
// rounds, adjacent → spread rows): bf16 5.1 → 2.6–3.0 ms, q8_0 4.3 → 2.1
// ms, f32 5.5–6.2 → 4.8–5.3 ms.
LB_T256_INLINE void lb_rows_decode256(int dt, float *y, const float *x, const void *W, const uint16_t *d, int C,
                                      int ldw, int r0, int r1, int beta0) {
    int ncb = (C + 31) / 32, S = (r1 - r0) / 6, r = r0 + 6 * S;
    for (int t = 0; t < S; t++) lb_rows_tile256_dt(dt, y, 0, x, 0, 1, 6, W, d, ncb, ldw, C, r0 + t, S, beta0);
    for (; r + 2 <= r1; r += 2) lb_rows_tile256_dt(dt, y, 0, x, 0, 1, 2, W, d, ncb, ldw, C, r, 1, beta0);
    if (r < r1) lb_rows_tile256_dt(dt, y, 0, x, 0, 1, 1, W, d, ncb, ldw, C, r, 1, beta0);
}

// lb_rows_tile256_dt on an F32 weight.
LB_T256_INLINE void lb_rows_tile256(float *y, int ldy, const float *x, int ldx, int G, int R, const float *W, int ldw,
                                    int C, int r, int beta0) {
    lb_rows_tile256_dt(LB_DTYPE_F32, y, ldy, x, ldx, G, R, W, NULL, 0, ldw, C, r, 1, beta0);
}

#endif

#endif
