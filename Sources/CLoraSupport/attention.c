// The matrix products of causal attention for one (sequence, head), with
// AVX-512: scores S = Q·Kᵀ and their gradients have an inner dimension of
// the head size (64 for GPT-2), the mixing products O = P·V and the rest
// an output width of it. OpenBLAS repacks both operands of such a product
// for every block of 64 query rows, and liblora's attention reached half of
// sgemm's rate on full head products (Intel Emerald Rapids, SkylakeX).
//
// One kernel serves all six products: y[m, n] = Σ_k x(m, k)·W[k, n], where
// x is read through two strides (a matrix or its transpose, as the
// products Pᵀ·dO and dSᵀ·Q need) and W is row-major. Tiles of 6 rows × 64
// columns keep 24 accumulators in registers; each output's sum is one
// fused multiply-add per k in k order, whatever the blocking, so a score
// recomputed in backward equals the forward's bit for bit. The causal
// mask's zeros are skipped: outputs no row needs, and terms whose x is a
// masked zero (adding +0 changes no finite sum).
#include "lora_support.h"

#include <immintrin.h>
#include <stddef.h>

#if defined(__x86_64__)

#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define INLINE __attribute__((always_inline)) static inline

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

#endif

int lb_attn_available(void) {
#if defined(__x86_64__)
    return lb_cpu_has_avx512();
#else
    return 0;
#endif
}

void lb_attn_gemm(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W, int ldw,
                  int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag) {
#if defined(__x86_64__)
    if (M > 0 && N > 0 && K > 0 && lb_cpu_has_avx512())
        att_gemm_avx512(y, ldy, x, sxm, sxk, M, W, ldw, K, N, beta0, alpha, causal, diag);
#endif
}

void lb_attn_transpose(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
#if defined(__x86_64__)
    if (lb_cpu_has_avx512()) att_transpose_avx512(dst, ldd, src, lds, rows, cols);
#endif
}
