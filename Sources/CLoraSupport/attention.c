// The matrix products of causal attention for one (sequence, head), with
// AVX-512 or AVX2: scores S = Q·Kᵀ and their gradients have an inner
// dimension of the head size (64 for GPT-2), the mixing products O = P·V
// and the rest an output width of it. OpenBLAS repacks both operands of
// such a product for every block of 64 query rows, and liblora's attention
// reached half of sgemm's rate on full head products (Intel Emerald Rapids,
// SkylakeX); on an AVX2-only AMD EPYC (Zen 2) the per-head sgemm calls ran
// at 117 GFLOP/s against 162–185 on the other products.
//
// One kernel serves all six products: y[m, n] = Σ_k x(m, k)·W[k, n], where
// x is read through two strides (a matrix or its transpose, as the
// products Pᵀ·dO and dSᵀ·Q need) and W is row-major. Tiles of 6 rows × 64
// columns (AVX-512: 24 accumulators) or 6 rows × 16 columns (AVX2: 12)
// stay in registers; each output's sum is one fused multiply-add per k in
// k order, from zero (or y), then times alpha, whatever the blocking, so a
// score recomputed in backward equals the forward's bit for bit, and both
// instruction sets give the same bits. The causal mask's zeros are
// skipped: outputs no row needs, and terms whose x is a masked zero
// (adding +0 changes no finite sum).
#include "lora_support.h"

#include <immintrin.h>
#include <stddef.h>

#if defined(__x86_64__)

#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define INLINE __attribute__((always_inline)) static inline
#define T256   __attribute__((target("avx2,fma")))

enum { ATT_KB = 64 };

// Rows [0, G) of x × columns [j, j + 16·NV) (the last vector masked) over
// k in [k0, k1): from zero or y, times alpha when `finish`.
INLINE T512 void att_tile(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int G, int NV,
                          __mmask16 last, const float *W, int ldw, int k0, int k1, int j, int fromZero, int finish,
                          float alpha) {
    __m512 a[6][4];
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 m = v == NV - 1 ? last : 0xFFFF;
            a[g][v] = fromZero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + (size_t)g * ldy + j + 16 * v);
        }
    const float *p = W + (size_t)k0 * ldw + j;
    const float *xk = x + k0 * sxk;
    for (int k = k0; k < k1; k++, p += ldw, xk += sxk) {
        __m512 w[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) w[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, p + 16 * v);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m512 xv = _mm512_set1_ps(xk[g * sxm]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) a[g][v] = _mm512_fmadd_ps(xv, w[v], a[g][v]);
        }
    }
    __m512 s = _mm512_set1_ps(alpha);
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(y + (size_t)g * ldy + j + 16 * v, v == NV - 1 ? last : 0xFFFF,
                                  finish ? _mm512_mul_ps(a[g][v], s) : a[g][v]);
}

#define ATT_G(NV)                                                                                                      \
    switch (G) {                                                                                                       \
    case 6:                                                                                                            \
        att_tile(y, ldy, x, sxm, sxk, 6, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    case 5:                                                                                                            \
        att_tile(y, ldy, x, sxm, sxk, 5, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    case 4:                                                                                                            \
        att_tile(y, ldy, x, sxm, sxk, 4, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    case 3:                                                                                                            \
        att_tile(y, ldy, x, sxm, sxk, 3, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    case 2:                                                                                                            \
        att_tile(y, ldy, x, sxm, sxk, 2, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    default:                                                                                                           \
        att_tile(y, ldy, x, sxm, sxk, 1, NV, last, W, ldw, k0, k1, j, fromZero, finish, alpha);                        \
        break;                                                                                                         \
    }

static T512 void att_tile_any(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int G, int NV,
                              __mmask16 last, const float *W, int ldw, int k0, int k1, int j, int fromZero, int finish,
                              float alpha) {
    switch (NV) {
    case 4:
        ATT_G(4);
        break;
    case 3:
        ATT_G(3);
        break;
    case 2:
        ATT_G(2);
        break;
    default:
        ATT_G(1);
        break;
    }
}

static T512 void att_gemm_avx512(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W,
                                 int ldw, int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag) {
    for (int j = 0; j < N; j += 64) {
        int width = N - j < 64 ? N - j : 64;
        int NV = (width + 15) / 16;
        int rem = width - 16 * (NV - 1);
        __mmask16 last = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        for (int k0 = 0; k0 < K; k0 += ATT_KB) {
            int k1 = k0 + ATT_KB < K ? k0 + ATT_KB : K;
            int fromZero = k0 == 0 && beta0;
            for (int m = 0; m < M; m += 6) {
                int G = M - m < 6 ? M - m : 6;
                int nv = NV, ka = k0, kz = k1;
                __mmask16 lm = last;
                if (causal == LB_ATTN_CAUSAL_COLS) {
                    // Whole vectors up to the group's last needed column.
                    ptrdiff_t need = diag + m + G - j;
                    if (need <= 0) continue;
                    if (need <= 16 * (ptrdiff_t)(NV - 1)) nv = (int)((need + 15) / 16), lm = 0xFFFF;
                } else if (causal == LB_ATTN_CAUSAL_K_UPTO) {
                    ptrdiff_t end = diag + m + G;
                    if (end < kz) kz = end > ka ? (int)end : ka;
                } else if (causal == LB_ATTN_CAUSAL_K_FROM) {
                    ptrdiff_t start = m - diag;
                    if (start > ka) ka = start < kz ? (int)start : kz;
                }
                int finish = k1 == K && alpha != 1.0f;
                if (ka == kz && !fromZero && !finish) continue;
                att_tile_any(y + (size_t)m * ldy, ldy, x + m * sxm, sxm, sxk, G, nv, lm, W, ldw, ka, kz, j, fromZero,
                             finish, alpha);
            }
        }
    }
}

// dst[c·ldd + r] = src[r·lds + c]: 16 rows at a time, one gather per column.
static T512 void att_transpose_avx512(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                     _mm512_set1_epi32(lds));
    for (int r = 0; r < rows; r += 16) {
        int n = rows - r < 16 ? rows - r : 16;
        __mmask16 m = (__mmask16)(n == 16 ? 0xFFFF : (1u << n) - 1);
        const float *s = src + (size_t)r * lds;
        for (int c = 0; c < cols; c++)
            _mm512_mask_storeu_ps(dst + (size_t)c * ldd + r, m,
                                  _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, s + c, 4));
    }
}

// The AVX2 form: tiles of up to 6 rows × 16 columns (two vectors of 8, the
// last masked when `masked`), the same sums in the same order.
INLINE T256 __m256 att_load8(const float *p, int masked, __m256i m) {
    return masked ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
}

INLINE T256 void att_tile8(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int G, int NV, int masked,
                           __m256i last, const float *W, int ldw, int k0, int k1, int j, int fromZero, int finish,
                           float alpha) {
    __m256 a[6][2];
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            a[g][v] = fromZero ? _mm256_setzero_ps()
                               : att_load8(y + (size_t)g * ldy + j + 8 * v, masked && v == NV - 1, last);
    const float *p = W + (size_t)k0 * ldw + j;
    const float *xk = x + k0 * sxk;
    for (int k = k0; k < k1; k++, p += ldw, xk += sxk) {
        __m256 w[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) w[v] = att_load8(p + 8 * v, masked && v == NV - 1, last);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m256 xv = _mm256_broadcast_ss(xk + g * sxm);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++) a[g][v] = _mm256_fmadd_ps(xv, w[v], a[g][v]);
        }
    }
    __m256 s = _mm256_set1_ps(alpha);
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            __m256 r = finish ? _mm256_mul_ps(a[g][v], s) : a[g][v];
            float *q = y + (size_t)g * ldy + j + 8 * v;
            if (masked && v == NV - 1)
                _mm256_maskstore_ps(q, last, r);
            else
                _mm256_storeu_ps(q, r);
        }
}

#define ATT8_G(NV, MASKED)                                                                                             \
    switch (G) {                                                                                                       \
    case 6:                                                                                                            \
        att_tile8(y, ldy, x, sxm, sxk, 6, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    case 5:                                                                                                            \
        att_tile8(y, ldy, x, sxm, sxk, 5, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    case 4:                                                                                                            \
        att_tile8(y, ldy, x, sxm, sxk, 4, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    case 3:                                                                                                            \
        att_tile8(y, ldy, x, sxm, sxk, 3, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    case 2:                                                                                                            \
        att_tile8(y, ldy, x, sxm, sxk, 2, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    default:                                                                                                           \
        att_tile8(y, ldy, x, sxm, sxk, 1, NV, MASKED, last, W, ldw, k0, k1, j, fromZero, finish, alpha);               \
        break;                                                                                                         \
    }

static T256 void att_tile8_any(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int G, int NV,
                               int masked, __m256i last, const float *W, int ldw, int k0, int k1, int j, int fromZero,
                               int finish, float alpha) {
    if (NV == 2) {
        if (masked) {
            ATT8_G(2, 1);
        } else {
            ATT8_G(2, 0);
        }
    } else {
        if (masked) {
            ATT8_G(1, 1);
        } else {
            ATT8_G(1, 0);
        }
    }
}

static T256 void att_gemm_avx2(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W,
                               int ldw, int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag) {
    for (int j = 0; j < N; j += 16) {
        int width = N - j < 16 ? N - j : 16;
        int NV = (width + 7) / 8;
        int rem = width - 8 * (NV - 1);
        __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int k0 = 0; k0 < K; k0 += ATT_KB) {
            int k1 = k0 + ATT_KB < K ? k0 + ATT_KB : K;
            int fromZero = k0 == 0 && beta0;
            for (int m = 0; m < M; m += 6) {
                int G = M - m < 6 ? M - m : 6;
                int nv = NV, ka = k0, kz = k1, masked = rem != 8;
                if (causal == LB_ATTN_CAUSAL_COLS) {
                    // Whole vectors up to the group's last needed column.
                    ptrdiff_t need = diag + m + G - j;
                    if (need <= 0) continue;
                    if (need <= 8 * (ptrdiff_t)(NV - 1)) nv = (int)((need + 7) / 8), masked = 0;
                } else if (causal == LB_ATTN_CAUSAL_K_UPTO) {
                    ptrdiff_t end = diag + m + G;
                    if (end < kz) kz = end > ka ? (int)end : ka;
                } else if (causal == LB_ATTN_CAUSAL_K_FROM) {
                    ptrdiff_t start = m - diag;
                    if (start > ka) ka = start < kz ? (int)start : kz;
                }
                int finish = k1 == K && alpha != 1.0f;
                if (ka == kz && !fromZero && !finish) continue;
                att_tile8_any(y + (size_t)m * ldy, ldy, x + m * sxm, sxm, sxk, G, nv, masked, last, W, ldw, ka, kz, j,
                              fromZero, finish, alpha);
            }
        }
    }
}

// dst[c·ldd + r] = src[r·lds + c]: 8 rows at a time, one gather per column.
static T256 void att_transpose_avx2(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(lds));
    for (int r = 0; r < rows; r += 8) {
        int n = rows - r < 8 ? rows - r : 8;
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const float *s = src + (size_t)r * lds;
        for (int c = 0; c < cols; c++)
            _mm256_maskstore_ps(dst + (size_t)c * ldd + r, m,
                                _mm256_mask_i32gather_ps(_mm256_setzero_ps(), s + c, idx, _mm256_castsi256_ps(m), 4));
    }
}

#endif

int lb_attn_available(void) {
    return lb_attn_available_at(lb_kernels_level());
}

int lb_attn_available_at(int level) {
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512) return lb_cpu_has_avx512();
    if (level >= LB_KERNELS_AVX2) return lb_cpu_has_avx2_fma();
#endif
    (void)level;
    return 0;
}

void lb_attn_gemm(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W, int ldw,
                  int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag) {
    lb_attn_gemm_at(lb_kernels_level(), y, ldy, x, sxm, sxk, M, W, ldw, K, N, beta0, alpha, causal, diag);
}

void lb_attn_gemm_at(int level, float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W,
                     int ldw, int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag) {
#if defined(__x86_64__)
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512())
        att_gemm_avx512(y, ldy, x, sxm, sxk, M, W, ldw, K, N, beta0, alpha, causal, diag);
    else if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma())
        att_gemm_avx2(y, ldy, x, sxm, sxk, M, W, ldw, K, N, beta0, alpha, causal, diag);
#else
    (void)level, (void)y, (void)ldy, (void)x, (void)sxm, (void)sxk, (void)M, (void)W, (void)ldw, (void)K, (void)N;
    (void)beta0, (void)alpha, (void)causal, (void)diag;
#endif
}

void lb_attn_transpose(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
#if defined(__x86_64__)
    if (lb_cpu_has_avx512())
        att_transpose_avx512(dst, ldd, src, lds, rows, cols);
    else if (lb_cpu_has_avx2_fma())
        att_transpose_avx2(dst, ldd, src, lds, rows, cols);
#endif
}
