// Reduced-precision frozen weights: BF16, F16 and Q8_0 (ggml's 8-bit blocks).
//
// Storage
// - BF16, F16: one uint16 per weight, in the F32 matrix's layout.
// - Q8_0: int8 weights in the F32 matrix's layout, plus one F16 scale per
//   block of 32 consecutive values along the INPUT dimension (as ggml): for a
//   Conv1D weight [in = K, out = N] (input along rows) the scales are
//   [ceil(K/32), N], block kb covering rows 32·kb ..< min(K, 32·kb + 32); for
//   a [rows, C] matrix used as rows·x (the tied LM head, input along C) they
//   are [rows, ceil(C/32)]. A last partial block takes its scale over the
//   values it has.
// Quantization is ggml's reference quantize_row_q8_0: d = max|w|/127 (F32),
// q = roundf(w · (1/d)) (half away from zero; 0 where d = 0), d stored as F16
// (round to nearest even). Dequantized weight = q · F16(d), exact in F32 (an
// 8-bit integer times an 11-bit significand).
//
// The matrix–vector kernels convert each weight to F32 in registers (exact
// for all three types) and run the F32 kernels' fused multiply-adds in the
// same order, so their results equal gemv.c's on the dequantized matrix bit
// for bit (tested): reduced precision changes the weights, never the math.
#include "lora_support.h"
#include "simd256.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// ---- scalar conversions -------------------------------------------------

uint16_t lb_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); // NaN stays NaN (quiet)
    u += 0x7FFFu + ((u >> 16) & 1u);                                          // round to nearest even
    return (uint16_t)(u >> 16);
}

void lb_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lb_f32_to_bf16(src[i]);
}

float lb_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lb_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0)); // inf, NaN
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); // rounds to ≥ 65520: overflow to inf
    if (ax < 0x38800000u) {
        // Subnormal F16 (or zero): value = m · 2^-24, m rounded to nearest even.
        if (ax < 0x33000000u) return (uint16_t)sign; // below half the smallest subnormal
        // |f| = m · 2^(e−150) with the implicit bit in m; in units of 2^−24
        // that is m · 2^(e−126) = m >> (126 − e), a shift of 14 … 24 here.
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (ax >> 23) - 112, m = ax & 0x7FFFFFu; // rebias 127 → 15
    uint32_t h = (e << 10) | (m >> 13), rem = m & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; // may carry into the exponent: still right
    return (uint16_t)(sign | h);
}

float lb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FFu, u;
    if (e == 0) {
        if (m == 0)
            u = sign;
        else { // subnormal: normalise
            e = 113;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            u = sign | (e << 23) | ((m & 0x3FFu) << 13);
        }
    } else if (e == 31)
        u = sign | 0x7F800000u | (m << 13);
    else
        u = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// The block's scale as F16 and 1/d; *bad = 1 when the block holds a NaN or
// infinity or its scale overflows F16 (max|w| > 65504·127).
static inline uint16_t q8_scale(const float *v, int n, size_t stride, float *inv, int *bad) {
    float amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(v[(size_t)i * stride]);
        if (!isfinite(a)) *bad = 1;
        amax = fmaxf(amax, a);
    }
    float d = amax / 127.0f;
    if (!(d <= 65504.0f)) *bad = 1;
    *inv = d != 0 && !*bad ? 1.0f / d : 0.0f;
    return lb_f32_to_f16(d);
}

// roundf(v·inv) as int8, defined for every input (0 for a NaN product).
static inline int8_t q8_round(float x) {
    float r = roundf(x);
    return r != r ? 0 : (int8_t)fmaxf(-127.0f, fminf(127.0f, r));
}

int lb_quantize_q8_0_cols(int8_t *q, uint16_t *d, const float *w, int K, int N) {
    int bad = 0;
    for (int kb = 0; kb * 32 < K; kb++) {
        int k0 = kb * 32, len = K - k0 < 32 ? K - k0 : 32;
        for (int n = 0; n < N; n++) {
            float inv;
            const float *col = w + (size_t)k0 * N + n;
            d[(size_t)kb * N + n] = q8_scale(col, len, (size_t)N, &inv, &bad);
            for (int i = 0; i < len; i++) q[(size_t)(k0 + i) * N + n] = q8_round(col[(size_t)i * N] * inv);
        }
    }
    return bad ? -1 : 0;
}

int lb_quantize_q8_0_rows(int8_t *q, uint16_t *d, const float *w, int R, int C) {
    int bad = 0, nb = (C + 31) / 32;
    for (int r = 0; r < R; r++) {
        for (int cb = 0; cb < nb; cb++) {
            int c0 = cb * 32, len = C - c0 < 32 ? C - c0 : 32;
            float inv;
            const float *v = w + (size_t)r * C + c0;
            d[(size_t)r * nb + cb] = q8_scale(v, len, 1, &inv, &bad);
            for (int i = 0; i < len; i++) q[(size_t)r * C + c0 + i] = q8_round(v[i] * inv);
        }
    }
    return bad ? -1 : 0;
}

// The F32 value of weight (k, n) of a [K, ldw] matrix stored as `dtype`.
static inline float weight_at(int dtype, const void *W, const uint16_t *d, int k, int n, int ldw, int cols_layout,
                              int ncb) {
    size_t i = (size_t)k * ldw + n;
    switch (dtype) {
    case LB_DTYPE_BF16:
        return lb_bf16_to_f32(((const uint16_t *)W)[i]);
    case LB_DTYPE_F16:
        return lb_f16_to_f32(((const uint16_t *)W)[i]);
    case LB_DTYPE_Q8_0: {
        float s =
            cols_layout ? lb_f16_to_f32(d[(size_t)(k / 32) * ldw + n]) : lb_f16_to_f32(d[(size_t)k * ncb + n / 32]);
        return (float)((const int8_t *)W)[i] * s;
    }
    default:
        return ((const float *)W)[i];
    }
}

void lb_dequant_cols(int dtype, float *dst, int ldd, const void *W, const uint16_t *d, int K, int ldw, int n0, int n1) {
    for (int k = 0; k < K; k++)
        for (int n = n0; n < n1; n++) dst[(size_t)k * ldd + (n - n0)] = weight_at(dtype, W, d, k, n, ldw, 1, 0);
}

void lb_dequant_rows(int dtype, float *dst, int ldd, const void *W, const uint16_t *d, int C, int ldw, int r0, int r1) {
    int ncb = (C + 31) / 32;
    for (int r = r0; r < r1; r++)
        for (int c = 0; c < C; c++) dst[(size_t)(r - r0) * ldd + c] = weight_at(dtype, W, d, r, c, ldw, 0, ncb);
}

#if defined(__x86_64__)

#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline
// Rows of W prefetched ahead (see gemv.c): a converting block's loop is
// three times longer, so out-of-order execution alone reaches only a few
// rows ahead; with the prefetch BF16 decode's products stream at 40 GB/s
// instead of 17 (Intel Emerald Rapids, 2 threads, the prefetch into L1).
// Into L2 since c0c5d2d, as gemv.c (bf16 decode on the AMX machine, three
// alternating pairs: 54.6/52.2, 48.1/61.9, 50.9/56.4 tok/s; q8_0 +3-5%;
// not re-measured on Emerald Rapids). Used by the AVX-512 bf16/f16 column
// kernels; q8_0's AVX-512 column kernel prefetches whole tiles ahead since
// ea302d1 (below).
enum { PFD = 8 };

// 16 weights (k, j … j+15) of a cols-layout matrix as F32, masked.
INLINE T512 __m512 load16_cols(int dtype, const void *W, const uint16_t *d, int k, int j, int ldw, __mmask16 m) {
    size_t i = (size_t)k * ldw + j;
    switch (dtype) {
    case LB_DTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case LB_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i));
    case LB_DTYPE_Q8_0: {
        __m128i b = _mm_maskz_loadu_epi8(m, (const int8_t *)W + i);
        __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
        __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, d + (size_t)(k / 32) * ldw + j));
        return _mm512_mul_ps(q, s);
    }
    default:
        return _mm512_maskz_loadu_ps(m, (const float *)W + i);
    }
}

INLINE T512 void lcols_block(int dtype, float *y, const float *x, const void *W, const uint16_t *d, int K, int ldw,
                             int j, int nv, __mmask16 last, int beta0) {
    __m512 acc[16];
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        acc[v] = beta0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + j + 16 * v);
    }
    int esize = dtype == LB_DTYPE_Q8_0 ? 1 : 2;
    for (int k = 0; k < K; k++) {
        if (k + PFD < K) {
            const char *q = (const char *)W + ((size_t)(k + PFD) * ldw + j) * esize;
            for (int b = 0; b < 16 * nv * esize; b += 64) _mm_prefetch(q + b, _MM_HINT_T1);
        }
        __m512 xv = _mm512_set1_ps(x[k]);
        for (int v = 0; v < nv; v++) {
            __mmask16 m = v == nv - 1 ? last : 0xFFFF;
            acc[v] = _mm512_fmadd_ps(xv, load16_cols(dtype, W, d, k, j + 16 * v, ldw, m), acc[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        _mm512_mask_storeu_ps(y + j + 16 * v, m, acc[v]);
    }
}

#define LCOLS(dt, name)                                                                                                \
    static T512 void name(float *y, const float *x, const void *W, const uint16_t *d, int K, int ldw, int n0, int n1,  \
                          int beta0) {                                                                                 \
        int j = n0;                                                                                                    \
        for (; j + 256 <= n1; j += 256) lcols_block(dt, y, x, W, d, K, ldw, j, 16, 0xFFFF, beta0);                     \
        for (; j + 128 <= n1; j += 128) lcols_block(dt, y, x, W, d, K, ldw, j, 8, 0xFFFF, beta0);                      \
        for (; j + 64 <= n1; j += 64) lcols_block(dt, y, x, W, d, K, ldw, j, 4, 0xFFFF, beta0);                        \
        for (; j + 16 <= n1; j += 16) lcols_block(dt, y, x, W, d, K, ldw, j, 1, 0xFFFF, beta0);                        \
        if (j < n1) lcols_block(dt, y, x, W, d, K, ldw, j, 1, (__mmask16)((1u << (n1 - j)) - 1), beta0);               \
    }
LCOLS(LB_DTYPE_BF16, lcols_bf16)
LCOLS(LB_DTYPE_F16, lcols_f16)

// Q8_0 columns in tiles of LCOLS_Q8_TILE_ROWS rows (one block of 32: the
// tile's rows share one row of scales) × LCOLS_Q8_TILE_COLS columns, in
// column strips top to bottom, each tile prefetching the one
// LCOLS_Q8_PF_TILES ahead into L2 (as gemm_small.c's F32 cols kernel),
// instead of 256 columns down every row, 8 rows ahead. Partial sums go back
// to y between tiles (exact); the same products q·d, then the same fused
// multiply-adds, so the same bits. Measured on the AMX machine (2 threads):
// GPT-2's 48 block products of one row 7.5 -> 6.7 ms (C microbenchmark,
// four alternating runs); `lora bench inference --dtype q8_0` decode,
// three pairs: 81.4/88.5, 70.5/87.9, 91.2/104.1 tok/s. The same tiles for
// bf16 and f16 decoded 5-8% slower there (three pairs each), so they keep
// the blocks above.
//
// Rows [k0, k1) (k0 a multiple of 32) of columns [j, j + 16·nv) (the last
// vector masked by `last`), from 0 (fromZero) or y. The block's scales as
// F32 in L1, read as memory operands: with 16 accumulators they would not
// fit the registers beside them (spilled accumulators cost a store and a
// load per row). pf: the same columns' first row in the tile ahead, pfRows
// rows of pfBytes from pf on.
INLINE T512 void lcols_q8_tile(float *y, const float *x, const int8_t *Q, const uint16_t *d, int k0, int k1, int ldw,
                               int j, int nv, __mmask16 last, int fromZero, const char *pf, int pfRows, int pfBytes) {
    __m512 acc[16];
    float sc[256] __attribute__((aligned(64)));
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        acc[v] = fromZero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + j + 16 * v);
        _mm512_store_ps(sc + 16 * v,
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, d + (size_t)(k0 / 32) * ldw + j + 16 * v)));
    }
    for (int k = k0; k < k1; k++) {
        const int8_t *row = Q + (size_t)k * ldw + j;
        if (pf && k - k0 < pfRows)
            for (int b = 0; b < pfBytes; b += 64) _mm_prefetch(pf + (size_t)(k - k0) * ldw + b, _MM_HINT_T1);
        __m512 xv = _mm512_set1_ps(x[k]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++) {
            __mmask16 m = v == nv - 1 ? last : 0xFFFF;
            __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + 16 * v)));
            acc[v] = _mm512_fmadd_ps(xv, _mm512_mul_ps(q, _mm512_load_ps(sc + 16 * v)), acc[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        _mm512_mask_storeu_ps(y + j + 16 * v, m, acc[v]);
    }
}

enum { LCOLS_Q8_TILE_ROWS = 32, LCOLS_Q8_TILE_COLS = 2048, LCOLS_Q8_PF_TILES = 2 };

static T512 void lcols_q8(float *y, const float *x, const void *W, const uint16_t *d, int K, int ldw, int n0, int n1,
                          int beta0) {
    const int8_t *Q = (const int8_t *)W;
    const int TR = LCOLS_Q8_TILE_ROWS, TC = LCOLS_Q8_TILE_COLS;
    for (int jt = n0; jt < n1; jt += TC) {
        int jt1 = n1 - jt < TC ? n1 : jt + TC;
        for (int k0 = 0; k0 < K; k0 += TR) {
            int k1 = K - k0 < TR ? K : k0 + TR;
            lb_tile t;
            const char *pfRow = lb_tile_ahead(n0, n1, K, TR, TC, jt, k0, LCOLS_Q8_PF_TILES, &t)
                                    ? (const char *)Q + (size_t)t.r0 * ldw
                                    : NULL;
            int pfRows = t.nrows, fz = beta0 && k0 == 0;
            for (int j = jt; j < jt1;) {
                int w = jt1 - j, nv = w >= 256 ? 16 : w >= 128 ? 8 : w >= 64 ? 4 : 1;
                int cols = w >= 16 ? 16 * nv : w;
                int pc = t.c0 + (j - jt), pfCols = t.c1 - pc < cols ? t.c1 - pc : cols;
                const char *pf = pfRow && pfCols > 0 ? pfRow + pc : NULL;
                if (nv == 16)
                    lcols_q8_tile(y, x, Q, d, k0, k1, ldw, j, 16, 0xFFFF, fz, pf, pfRows, pfCols);
                else if (nv == 8)
                    lcols_q8_tile(y, x, Q, d, k0, k1, ldw, j, 8, 0xFFFF, fz, pf, pfRows, pfCols);
                else if (nv == 4)
                    lcols_q8_tile(y, x, Q, d, k0, k1, ldw, j, 4, 0xFFFF, fz, pf, pfRows, pfCols);
                else
                    lcols_q8_tile(y, x, Q, d, k0, k1, ldw, j, 1, (__mmask16)(cols == 16 ? 0xFFFF : (1u << cols) - 1),
                                  fz, pf, pfRows, pfCols);
                j += cols;
            }
        }
    }
}

// 16 weights (r, c … c+15) of a rows-layout matrix as F32, masked.
INLINE T512 __m512 load16_rows(int dtype, const void *W, const uint16_t *d, int r, int c, int ldw, int ncb,
                               __mmask16 m) {
    size_t i = (size_t)r * ldw + c;
    switch (dtype) {
    case LB_DTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case LB_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)W + i));
    case LB_DTYPE_Q8_0: {
        __m128i b = _mm_maskz_loadu_epi8(m, (const int8_t *)W + i);
        __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
        // c is a multiple of 16: the 16 values share block c/32. F16C's
        // conversion gives lb_f16_to_f32's value; calling that function
        // here made the q8_0 LM head's 16-row tiles take 290 ms instead of
        // 13 (2 threads, the C microbenchmark built by gcc -O2).
        return _mm512_mul_ps(q, _mm512_set1_ps(_cvtsh_ss(d[(size_t)r * ncb + c / 32])));
    }
    default:
        return _mm512_maskz_loadu_ps(m, (const float *)W + i);
    }
}

#define LROWS(dt, name)                                                                                                \
    static T512 void name(float *y, const float *x, const void *W, const uint16_t *d, int C, int ldw, int r0, int r1,  \
                          int beta0) {                                                                                 \
        int ncb = (C + 31) / 32;                                                                                       \
        for (int r = r0; r < r1; r++) {                                                                                \
            __m512 a = _mm512_setzero_ps();                                                                            \
            int c = 0;                                                                                                 \
            for (; c + 16 <= C; c += 16)                                                                               \
                a = _mm512_fmadd_ps(load16_rows(dt, W, d, r, c, ldw, ncb, 0xFFFF), _mm512_loadu_ps(x + c), a);         \
            if (c < C) {                                                                                               \
                __mmask16 m = (__mmask16)((1u << (C - c)) - 1);                                                        \
                a = _mm512_fmadd_ps(load16_rows(dt, W, d, r, c, ldw, ncb, m), _mm512_maskz_loadu_ps(m, x + c), a);     \
            }                                                                                                          \
            float s = _mm512_reduce_add_ps(a);                                                                         \
            y[r] = beta0 ? s : y[r] + s;                                                                               \
        }                                                                                                              \
    }
LROWS(LB_DTYPE_BF16, lrows_bf16)
LROWS(LB_DTYPE_F16, lrows_f16)

// Q8_0 rows (the tied LM head): four rows share the loads of x, each row's
// block scale is converted once per 32 values (F16C, exact); per row the
// same products q·d and the same sums as LROWS, so the same bits.
INLINE T512 __m512 q8_16(const int8_t *q, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, q)));
}

static T512 void lrows_q8(float *y, const float *x, const void *W, const uint16_t *d, int C, int ldw, int r0, int r1,
                          int beta0) {
    int ncb = (C + 31) / 32;
    const int8_t *Q = (const int8_t *)W;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const int8_t *q0 = Q + (size_t)r * ldw, *q1 = q0 + ldw, *q2 = q1 + ldw, *q3 = q2 + ldw;
        const uint16_t *d0 = d + (size_t)r * ncb, *d1 = d0 + ncb, *d2 = d1 + ncb, *d3 = d2 + ncb;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m512 s0 = a0, s1 = a0, s2 = a0, s3 = a0;
        for (int c = 0; c < C; c += 16) {
            if (c % 32 == 0) {
                s0 = _mm512_set1_ps(_cvtsh_ss(d0[c / 32]));
                s1 = _mm512_set1_ps(_cvtsh_ss(d1[c / 32]));
                s2 = _mm512_set1_ps(_cvtsh_ss(d2[c / 32]));
                s3 = _mm512_set1_ps(_cvtsh_ss(d3[c / 32]));
            }
            __mmask16 m = C - c >= 16 ? 0xFFFF : (__mmask16)((1u << (C - c)) - 1);
            __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
            a0 = _mm512_fmadd_ps(_mm512_mul_ps(q8_16(q0 + c, m), s0), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_mul_ps(q8_16(q1 + c, m), s1), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_mul_ps(q8_16(q2 + c, m), s2), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_mul_ps(q8_16(q3 + c, m), s3), xv, a3);
        }
        float t0 = _mm512_reduce_add_ps(a0), t1 = _mm512_reduce_add_ps(a1);
        float t2 = _mm512_reduce_add_ps(a2), t3 = _mm512_reduce_add_ps(a3);
        y[r] = beta0 ? t0 : y[r] + t0;
        y[r + 1] = beta0 ? t1 : y[r + 1] + t1;
        y[r + 2] = beta0 ? t2 : y[r + 2] + t2;
        y[r + 3] = beta0 ? t3 : y[r + 3] + t3;
    }
    for (; r < r1; r++) {
        const int8_t *q0 = Q + (size_t)r * ldw;
        const uint16_t *d0 = d + (size_t)r * ncb;
        __m512 a0 = _mm512_setzero_ps(), s0 = a0;
        for (int c = 0; c < C; c += 16) {
            if (c % 32 == 0) s0 = _mm512_set1_ps(_cvtsh_ss(d0[c / 32]));
            __mmask16 m = C - c >= 16 ? 0xFFFF : (__mmask16)((1u << (C - c)) - 1);
            a0 = _mm512_fmadd_ps(_mm512_mul_ps(q8_16(q0 + c, m), s0), _mm512_maskz_loadu_ps(m, x + c), a0);
        }
        float t0 = _mm512_reduce_add_ps(a0);
        y[r] = beta0 ? t0 : y[r] + t0;
    }
}

// ---- AVX2 + FMA + F16C -------------------------------------------------
//
// The same conversions on 8 lanes, in the F32 kernels' orders (one fused
// multiply-add per k for cols, gemm_small.c's tiles; 8 partial sums per row
// and lb_hsum256 for rows, simd256.h's tile), so again the F32 kernel's
// bits on the dequantized weights.

#define T256L __attribute__((target("avx2,fma,f16c")))

// simd256.h's decode rows, as gemv.c's F32 rows kernel.
INLINE T256L void lrows_avx2_dt(int dtype, float *y, const float *x, const void *W, const uint16_t *d, int C, int ldw,
                                int r0, int r1, int beta0) {
    lb_rows_decode256(dtype, y, x, W, d, C, ldw, r0, r1, beta0);
}

// One copy of `fn` per dtype, so the conversion is chosen outside the loops.
#define BY_DTYPE(fn, dtype, ...)                                                                                       \
    do {                                                                                                               \
        if ((dtype) == LB_DTYPE_BF16)                                                                                  \
            fn(LB_DTYPE_BF16, __VA_ARGS__);                                                                            \
        else if ((dtype) == LB_DTYPE_F16)                                                                              \
            fn(LB_DTYPE_F16, __VA_ARGS__);                                                                             \
        else                                                                                                           \
            fn(LB_DTYPE_Q8_0, __VA_ARGS__);                                                                            \
    } while (0)

static T256L void lrows_avx2(int dtype, float *y, const float *x, const void *W, const uint16_t *d, int C, int ldw,
                             int r0, int r1, int beta0) {
    BY_DTYPE(lrows_avx2_dt, dtype, y, x, W, d, C, ldw, r0, r1, beta0);
}

// Panels: 8 values at a time.
static T256L void panel_avx2(int dtype, int cols_layout, float *dst, int ldd, const void *W, const uint16_t *d, int C,
                             int r0, int r1, int c0, int c1) {
    int ncb = (C + 31) / 32;
    size_t es = dtype == LB_DTYPE_Q8_0 ? 1 : 2;
    for (int r = r0; r < r1; r++) {
        float *out = dst + (size_t)(r - r0) * ldd - c0;
        for (int c = c0; c < c1; c += 8) {
            int n = c1 - c < 8 ? c1 - c : 8;
            __m256 w = lb_wload256(dtype, (const char *)W + ((size_t)r * C + c) * es, n);
            if (dtype == LB_DTYPE_Q8_0)
                w = _mm256_mul_ps(w, cols_layout
                                         ? lb_wload256(LB_DTYPE_F16, (const char *)(d + (size_t)(r / 32) * C + c), n)
                                         : _mm256_set1_ps(_cvtsh_ss(d[(size_t)r * ncb + c / 32])));
            if (n == 8)
                _mm256_storeu_ps(out + c, w);
            else
                _mm256_maskstore_ps(out + c, lb_mask8(n), w);
        }
    }
}

#endif

// ---- panels for the matrix products (prefill, training, batched steps) ---

#if defined(__x86_64__)
#define PANEL(name, load)                                                                                              \
    static T512 void name(int dtype, float *dst, int ldd, const void *W, const uint16_t *d, int C, int r0, int r1,     \
                          int c0, int c1) {                                                                            \
        int ncb = (C + 31) / 32;                                                                                       \
        (void)ncb;                                                                                                     \
        for (int r = r0; r < r1; r++) {                                                                                \
            float *out = dst + (size_t)(r - r0) * ldd - c0;                                                            \
            int c = c0;                                                                                                \
            for (; c + 16 <= c1; c += 16) _mm512_storeu_ps(out + c, load(0xFFFF));                                     \
            if (c < c1) {                                                                                              \
                __mmask16 m = (__mmask16)((1u << (c1 - c)) - 1);                                                       \
                _mm512_mask_storeu_ps(out + c, m, load(m));                                                            \
            }                                                                                                          \
        }                                                                                                              \
    }
#define LOAD_COLS(m) load16_cols(dtype, W, d, r, c, C, m)
#define LOAD_ROWS(m) load16_rows(dtype, W, d, r, c, C, ncb, m)
PANEL(panel_cols512, LOAD_COLS)
PANEL(panel_rows512, LOAD_ROWS)
#endif

void lb_dequant_panel(int dtype, int cols_layout, float *dst, int ldd, const void *W, const uint16_t *d, int C, int r0,
                      int r1, int c0, int c1) {
    lb_dequant_panel_at(lb_kernels_level(), dtype, cols_layout, dst, ldd, W, d, C, r0, r1, c0, c1);
}

void lb_dequant_panel_at(int level, int dtype, int cols_layout, float *dst, int ldd, const void *W, const uint16_t *d,
                         int C, int r0, int r1, int c0, int c1) {
#if defined(__x86_64__)
    // The rows layout's vector load needs c0 on a 16-value boundary (one Q8_0 block per vector).
    if (level >= LB_KERNELS_AVX512 && dtype != LB_DTYPE_F32 && lb_cpu_has_avx512() && (cols_layout || c0 % 16 == 0)) {
        if (cols_layout)
            panel_cols512(dtype, dst, ldd, W, d, C, r0, r1, c0, c1);
        else
            panel_rows512(dtype, dst, ldd, W, d, C, r0, r1, c0, c1);
        return;
    }
    // 8 values share a Q8_0 block when c0 is on an 8-value boundary.
    if (level >= LB_KERNELS_AVX2 && dtype != LB_DTYPE_F32 && lb_cpu_has_avx2_fma() && (cols_layout || c0 % 8 == 0)) {
        panel_avx2(dtype, cols_layout, dst, ldd, W, d, C, r0, r1, c0, c1);
        return;
    }
#endif
    (void)level;
    int ncb = (C + 31) / 32;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++)
            dst[(size_t)(r - r0) * ldd + (c - c0)] = weight_at(dtype, W, d, r, c, C, cols_layout, ncb);
}

// Scratch areas per thread (LB_SCRATCH_SLOTS, each for one user), grown on
// demand and freed when the thread ends.
typedef struct {
    float *p[LB_SCRATCH_SLOTS];
    size_t cap[LB_SCRATCH_SLOTS];
} scratch_t;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void scratch_free(void *v) {
    scratch_t *s = v;
    for (int i = 0; i < LB_SCRATCH_SLOTS; i++) free(s->p[i]);
    free(s);
}
static void scratch_init(void) {
    (void)pthread_key_create(&scratch_key, scratch_free);
}

float *lb_thread_scratch(size_t count) {
    return lb_thread_scratch_slot(0, count);
}

float *lb_thread_scratch_slot(int slot, size_t count) {
    if (slot < 0 || slot >= LB_SCRATCH_SLOTS) return NULL;
    pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        if (pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->cap[slot] < count) {
        void *p = NULL;
        if (posix_memalign(&p, 64, count * sizeof(float)) != 0) return NULL;
        free(s->p[slot]);
        s->p[slot] = p;
        s->cap[slot] = count;
    }
    return s->p[slot];
}

#if defined(__x86_64__)
typedef void (*gemv_lowp_fn)(float *y, const float *x, const void *W, const uint16_t *d, int n, int ldw, int i0, int i1,
                             int beta0);

// The AVX-512 kernel among the three for `dtype`; NULL for F32 or without AVX-512.
static gemv_lowp_fn avx512_kernel(int level, int dtype, gemv_lowp_fn bf16, gemv_lowp_fn f16, gemv_lowp_fn q8) {
    if (level < LB_KERNELS_AVX512 || !lb_cpu_has_avx512()) return NULL;
    return dtype == LB_DTYPE_BF16 ? bf16 : dtype == LB_DTYPE_F16 ? f16 : dtype == LB_DTYPE_Q8_0 ? q8 : NULL;
}
#endif

void lb_gemv_cols_lowp(int level, int dtype, float *y, const float *x, const void *W, const uint16_t *d, int K, int ldw,
                       int n0, int n1, int beta0) {
    if (dtype == LB_DTYPE_F32) {
        lb_gemv_cols_at(level, y, x, W, K, ldw, n0, n1, beta0);
        return;
    }
#if defined(__x86_64__)
    // On AMD, wide BF16/F16 products run gemm_small.c's tiles of 32 rows ×
    // 512 columns on this one row, converting in registers (the same sums
    // in the same order, as F32 decode does): the 48 block products of one
    // row on 2 threads 11.1–13.5 → 7.0–9.8 ms (AMD EPYC, Zen 4, C
    // microbenchmark). On Intel the same tiles decoded bf16/f16 5–8%
    // slower (the AMX machine, see lcols_q8); on Emerald Rapids bf16
    // decoded within the noise of these blocks (six alternating pairs of
    // `lora bench inference --dtype bf16`, a noisy hour: medians 61.2
    // against 59.2 tok/s, these 52–68), so Intel keeps them
    // (lb_lowp_wide_decode). From 256 columns: before, a worker's
    // range needed 512, so with 2 workers GPT-2's two 768-column products
    // (42% of a layer's weights) ran lcols_bf16/lcols_f16, which read
    // slowly on Zen 4 (on 2 threads the 48 block products of one row
    // 8.7–11.4 → 7.2–8.4 ms, bf16, C microbenchmark, five alternating runs;
    // decode in the commit). Attention's products on a bf16 cache (64
    // columns) keep the column kernels.
    if (level >= LB_KERNELS_AVX512 && (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16) && K >= 64 && n1 - n0 >= 256 &&
        lb_lowp_wide_decode()) {
        lb_gemm_cols_lowp_at(level, dtype, 1, y, 0, x, 0, 1, W, d, K, ldw, n0, n1, beta0);
        return;
    }
    gemv_lowp_fn f = avx512_kernel(level, dtype, lcols_bf16, lcols_f16, lcols_q8);
    if (f) {
        f(y, x, W, d, K, ldw, n0, n1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && dtype != LB_DTYPE_F32 && lb_cpu_has_avx2_fma()) {
        // gemm_small.c's AVX2 tiles on this one row (8 rows × 8 KiB of
        // each weight row), converting in registers.
        lb_gemm_cols_lowp_at(level, dtype, 1, y, 0, x, 0, 1, W, d, K, ldw, n0, n1, beta0);
        return;
    }
#endif
    (void)level;
    // Plain loop: the same order (k ascending, fused multiply-add) as the vector kernels.
    for (int n = n0; n < n1; n++) {
        float a = beta0 ? 0 : y[n];
        for (int k = 0; k < K; k++) a = fmaf(x[k], weight_at(dtype, W, d, k, n, ldw, 1, 0), a);
        y[n] = a;
    }
}

void lb_gemv_rows_lowp(int level, int dtype, float *y, const float *x, const void *W, const uint16_t *d, int C, int ldw,
                       int r0, int r1, int beta0) {
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512() && C <= 8) {
        // Rows of at most 8 values: gemv.c sums those by a horizontal-add
        // tree; dequantize a chunk of rows and run it, for the same bits.
        float buf[64 * 8];
        for (int r = r0; r < r1; r += 64) {
            int n = r1 - r < 64 ? r1 - r : 64;
            lb_dequant_rows(dtype, buf, C, W, d, C, ldw, r, r + n);
            lb_gemv_rows_at(LB_KERNELS_AVX512, y + r, x, buf, C, C, 0, n, beta0);
        }
        return;
    }
    if (level >= LB_KERNELS_AVX512 && dtype == LB_DTYPE_Q8_0 && ldw == C && C <= LB_ROWS_TILE_FLOATS &&
        lb_lowp_wide_decode()) {
        // On AMD, Q8_0 rows (the tied LM head) run gemm_small.c's rows
        // kernel on this one row: the same sums (16 lanes, reduced alike),
        // with the block scales converted once per tile and the rows ahead
        // prefetched. The LM head [50257, 768] on 2 threads 4.4–6.7 → 1.7–2.9
        // ms (AMD EPYC, Zen 4, C microbenchmark, 12 alternating pairs).
        // `tile` is for that function's converting path, which it takes only
        // without AVX-512 or with lb_set_lowp_in_registers(0), and then
        // lb_lowp_wide_decode() is 0 too.
        float tile[LB_ROWS_TILE_FLOATS];
        lb_gemm_rows_lowp_at(level, dtype, 0, y, 0, x, 0, 1, W, d, C, r0, r1, beta0, tile, LB_ROWS_TILE_FLOATS);
        return;
    }
    gemv_lowp_fn f = avx512_kernel(level, dtype, lrows_bf16, lrows_f16, lrows_q8);
    if (f) {
        f(y, x, W, d, C, ldw, r0, r1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && dtype != LB_DTYPE_F32 && lb_cpu_has_avx2_fma()) {
        lrows_avx2(dtype, y, x, W, d, C, ldw, r0, r1, beta0);
        return;
    }
#endif
    (void)level;
    int ncb = (C + 31) / 32;
    for (int r = r0; r < r1; r++) {
        float a = 0;
        for (int c = 0; c < C; c++) a = fmaf(weight_at(dtype, W, d, r, c, ldw, 0, ncb), x[c], a);
        y[r] = beta0 ? a : y[r] + a;
    }
}
