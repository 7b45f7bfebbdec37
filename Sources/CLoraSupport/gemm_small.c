// Matrix products with few rows (2 to a few dozen: a batched engine step's
// decode tokens, short prompt chunks): every weight is read from memory once
// and used for all rows while it sits in L1.
//
// OpenBLAS 0.3.21's sgemm packs the whole weight for every call, and with 16
// rows that packing costs as much as the arithmetic: GPT-2 124M's 48 block
// products for 16 rows took 33 ms on 2 threads (SkylakeX kernels, Intel
// Emerald Rapids), these kernels 20 ms (measured in the commit adding them).
//
// Results equal the decode kernels' (gemv.c) row by row, bit for bit: each
// output's sum runs in the same order as lb_gemv_cols / lb_gemv_rows at the
// same instruction-set level, so a sequence's numbers do not depend on how
// many other rows share its step.
// - cols: y[m, n] = y0[m, n] + Σ_k x[m, k]·W[k, n], one fused multiply-add
//   per k in k order (on AVX2, some shapes in two parts: cols_split). On
//   AVX-512, 64 columns of a tile of W stay in L1 while groups of 6 rows
//   of x pass over them; a later tile of W is prefetched. Up to 32 rows of
//   x the tiles are 32 rows × 512 columns, prefetched two ahead: each row
//   of W is read 2 KiB at a time instead of 256 bytes, and the reads run
//   two tiles ahead of the arithmetic. With more rows, strips of 64
//   columns in blocks of 64 rows, each prefetching the next (the wide
//   tiles were no faster at 32 rows, and slower at 79 and 128).
// - rows: y[m, r] = y0[m, r] + Σ_c W[r, c]·x[m, c], with gemv_rows's partial
//   sums (16 lanes, or 8 with AVX2) and reduction. Tiles of 4 rows of W stay
//   in L1 while groups of 6 rows of x pass over them; the rows of W
//   ROWS_PF_TILES tiles ahead are prefetched.
// Both prefetch into L2 (T1), spread over every group's pass, so the memory
// reads go on while later groups multiply from L1. Measured with 16 rows on
// 2 threads (Intel Emerald Rapids, weights not in cache): the tied LM head
// [50257, 768] 10.3 → 8.0 ms; GPT-2's 48 block products with the cols
// prefetch into L1 (T0) instead of L2 20.5–21.4 → 18.6–19.6 ms. The wide
// tiles, measured on the AMX machine (Intel, KVM model 167; 2 threads, the
// columns split between them, six alternating runs, means): the 48 block
// products for 16 rows 26.9 → 22.6 ms, for one row 26.6 → 13.4 ms (the
// decode kernel before 24bc28e, 128 columns down all rows at a time: 16.4
// ms; it now runs these tiles on its wide products). The AVX2 kernels (AMD
// Zen 2 and older) have their own tiles and x packing, below.
#include "lora_support.h"
#include "simd256.h"

#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>

#if defined(__x86_64__)

#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define T256   __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline

// Whether `level` runs the AVX2 kernels here (AVX2, not AVX-512).
static int avx2_runs(int level) {
    return !(level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512()) && level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma();
}

// KB: rows of W per block of the AVX-512 cols kernel above 32 rows of x,
// of the AVX2 cols kernel, and per tile of a reduced-precision weight
// (below). The AVX-512 cols kernel's tiles up to COLS_WIDE_MAX_M rows:
// COLS_TILE_ROWS × COLS_TILE_COLS, prefetched COLS_PF_TILES tiles ahead.
// ROWS_PF_TILES: how many 4-row tiles ahead the rows kernel prefetches
// (into L2, as the cols kernel).
enum { KB = 64, COLS_TILE_ROWS = 32, COLS_TILE_COLS = 512, COLS_PF_TILES = 2, COLS_WIDE_MAX_M = 32, ROWS_PF_TILES = 4 };

// ---- AVX-512: cols ------------------------------------------------------

// Rows [0, G) of x × columns [j, j + 16·NV) (the last vector masked) over
// W rows [k0, k1), starting from 0 (fromZero) or y. pf: the same columns'
// first row in a tile ahead, which has pfRows rows and pfLines cache lines
// (1–4) of them from pf on; this group prefetches every pfEvery-th of
// them, from pfPhase.
// W and pf point at bytes: the weight is F32, or BF16/F16 (dt) converted to
// F32 in registers as it is loaded (exactly: the same values, the same sums).
INLINE T512 __m512 wload512(int dt, const char *p, __mmask16 m) {
    if (dt == LB_DTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    if (dt == LB_DTYPE_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_maskz_loadu_ps(m, (const float *)p);
}

// Q8_0: 16 int8 weights as F32 (their scale applied by the caller).
INLINE T512 __m512 q8load512(const char *p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

// Bytes per weight value of a dtype the kernels below read.
INLINE size_t wbytes(int dt) {
    return dt == LB_DTYPE_F32 ? 4 : dt == LB_DTYPE_Q8_0 ? 1 : 2;
}

// Q8_0 (cols layout: int8 W[k, n], F16 scale d[k / 32, n], ldw apart) goes
// a block of 32 rows at a time: the block's scales are converted once into
// sc (memory operands: with 24 sums and 4 weight vectors in registers there
// is no room for them), and each weight is q · d as the dequantized matrix
// holds it (exact in F32), so the sums are the F32 kernel's on that matrix.
INLINE T512 void cols_tile512(int dt, float *y, int ldy, const float *x, int ldx, int G, int NV, __mmask16 last,
                              const char *W, const uint16_t *d, int ldw, int k0, int k1, int j, int fromZero,
                              const char *pf, int pfRows, int pfLines, int pfEvery, int pfPhase) {
    const size_t es = wbytes(dt), rowBytes = (size_t)ldw * es;
    float sc[4][16] __attribute__((aligned(64)));
    __m512 a[6][4];
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 m = v == NV - 1 ? last : 0xFFFF;
            a[g][v] = fromZero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + (size_t)g * ldy + j + 16 * v);
        }
    const char *p = W + ((size_t)k0 * ldw + j) * es;
    int turn = pfPhase;
    for (int k = k0; k < k1; k++, p += rowBytes) {
        if (dt == LB_DTYPE_Q8_0 && (k == k0 || k % 32 == 0)) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                _mm512_store_ps(sc[v], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                                           v == NV - 1 ? last : 0xFFFF, d + (size_t)(k / 32) * ldw + j + 16 * v)));
        }
        // Every group prefetches its share of the tile ahead's rows, so the
        // memory reads overlap all groups' arithmetic.
        if (pf && turn == 0 && k - k0 < pfRows) {
            const char *q = pf + (size_t)(k - k0) * rowBytes;
            _mm_prefetch(q, _MM_HINT_T1);
            if (pfLines > 1) _mm_prefetch(q + 64, _MM_HINT_T1);
            if (pfLines > 2) _mm_prefetch(q + 128, _MM_HINT_T1);
            if (pfLines > 3) _mm_prefetch(q + 192, _MM_HINT_T1);
        }
        turn = turn == 0 ? pfEvery - 1 : turn - 1;
        __m512 w[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            w[v] = dt == LB_DTYPE_Q8_0
                       ? _mm512_mul_ps(q8load512(p + 16 * v, v == NV - 1 ? last : 0xFFFF), _mm512_load_ps(sc[v]))
                       : wload512(dt, p + 16 * es * v, v == NV - 1 ? last : 0xFFFF);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m512 xv = _mm512_set1_ps(x[(size_t)g * ldx + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) a[g][v] = _mm512_fmadd_ps(xv, w[v], a[g][v]);
        }
    }
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(y + (size_t)g * ldy + j + 16 * v, v == NV - 1 ? last : 0xFFFF, a[g][v]);
}

#define COLS512_G(DT, NV)                                                                                              \
    switch (G) {                                                                                                       \
    case 6:                                                                                                            \
        cols_tile512(DT, y, ldy, x, ldx, 6, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    case 5:                                                                                                            \
        cols_tile512(DT, y, ldy, x, ldx, 5, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    case 4:                                                                                                            \
        cols_tile512(DT, y, ldy, x, ldx, 4, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    case 3:                                                                                                            \
        cols_tile512(DT, y, ldy, x, ldx, 3, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    case 2:                                                                                                            \
        cols_tile512(DT, y, ldy, x, ldx, 2, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    default:                                                                                                           \
        cols_tile512(DT, y, ldy, x, ldx, 1, NV, last, W, d, ldw, k0, k1, j, fromZero, pf, pfRows, pfLines, pfEvery,    \
                     pfPhase);                                                                                         \
        break;                                                                                                         \
    }

#define COLS512_ANY(name, DT)                                                                                          \
    static T512 void name(float *y, int ldy, const float *x, int ldx, int G, int NV, __mmask16 last, const char *W,    \
                          const uint16_t *d, int ldw, int k0, int k1, int j, int fromZero, const char *pf, int pfRows, \
                          int pfLines, int pfEvery, int pfPhase) {                                                     \
        switch (NV) {                                                                                                  \
        case 4:                                                                                                        \
            COLS512_G(DT, 4);                                                                                          \
            break;                                                                                                     \
        case 3:                                                                                                        \
            COLS512_G(DT, 3);                                                                                          \
            break;                                                                                                     \
        case 2:                                                                                                        \
            COLS512_G(DT, 2);                                                                                          \
            break;                                                                                                     \
        default:                                                                                                       \
            COLS512_G(DT, 1);                                                                                          \
            break;                                                                                                     \
        }                                                                                                              \
    }
COLS512_ANY(cols_tile512_f32, LB_DTYPE_F32)
COLS512_ANY(cols_tile512_bf16, LB_DTYPE_BF16)
COLS512_ANY(cols_tile512_f16, LB_DTYPE_F16)
COLS512_ANY(cols_tile512_q8, LB_DTYPE_Q8_0)

// Tiles of W in column strips, top to bottom; in each tile, 64 columns at a
// time stay in L1 while the groups of rows pass over them, and each tile
// prefetches the one `pfTiles` ahead into L2. Up to COLS_WIDE_MAX_M rows,
// where the memory reads set the pace, wide tiles (COLS_TILE_ROWS ×
// COLS_TILE_COLS, COLS_PF_TILES ahead); with more rows, where the
// arithmetic does, strips of 64 columns in blocks of KB rows, the next one
// prefetched.
static T512 void gemm_cols_avx512(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *Wv,
                                  const uint16_t *d, int K, int ldw, int n0, int n1, int beta0) {
    const char *W = Wv;
    const size_t es = wbytes(dt);
    int wide = M <= COLS_WIDE_MAX_M;
    int tileRows = wide ? COLS_TILE_ROWS : KB, tileCols = wide ? COLS_TILE_COLS : 64;
    int pfTiles = wide ? COLS_PF_TILES : 1;
    int groups = (M + 5) / 6;
    for (int jt = n0; jt < n1; jt += tileCols) {
        int jt1 = n1 - jt < tileCols ? n1 : jt + tileCols;
        for (int k0 = 0; k0 < K; k0 += tileRows) {
            int k1 = K - k0 < tileRows ? K : k0 + tileRows;
            lb_tile t;
            const char *pfRow =
                lb_tile_ahead(n0, n1, K, tileRows, tileCols, jt, k0, pfTiles, &t) ? W + (size_t)t.r0 * ldw * es : NULL;
            for (int j = jt; j < jt1; j += 64) {
                int width = jt1 - j < 64 ? jt1 - j : 64;
                int NV = (width + 15) / 16;
                int rem = width - 16 * (NV - 1);
                __mmask16 last = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
                // The same 64 columns of the tile ahead, if it has them.
                int pc = t.c0 + (j - jt);
                const char *pf = pfRow && pc < t.c1 ? pfRow + (size_t)pc * es : NULL;
                int pfCols = t.c1 - pc < 64 ? t.c1 - pc : 64, pfLines = (int)((es * pfCols + 63) / 64);
                for (int m = 0, g = 0; m < M; m += 6, g++) {
                    int G = M - m < 6 ? M - m : 6;
                    float *ym = y + (size_t)m * ldy;
                    const float *xm = x + (size_t)m * ldx;
                    int z = k0 == 0 && beta0;
                    if (dt == LB_DTYPE_BF16)
                        cols_tile512_bf16(ym, ldy, xm, ldx, G, NV, last, W, d, ldw, k0, k1, j, z, pf, t.nrows, pfLines,
                                          groups, g);
                    else if (dt == LB_DTYPE_F16)
                        cols_tile512_f16(ym, ldy, xm, ldx, G, NV, last, W, d, ldw, k0, k1, j, z, pf, t.nrows, pfLines,
                                         groups, g);
                    else if (dt == LB_DTYPE_Q8_0)
                        cols_tile512_q8(ym, ldy, xm, ldx, G, NV, last, W, d, ldw, k0, k1, j, z, pf, t.nrows, pfLines,
                                        groups, g);
                    else
                        cols_tile512_f32(ym, ldy, xm, ldx, G, NV, last, W, d, ldw, k0, k1, j, z, pf, t.nrows, pfLines,
                                         groups, g);
                }
            }
        }
    }
}

// ---- AVX-512: rows ------------------------------------------------------

// W rows [r, r + R) × x rows [0, G): the partial sums of gemv_rows_avx512.
// W and pf point at bytes, as the cols kernel's (dt: F32, BF16, F16 or Q8_0).
// Q8_0 (rows layout: int8 W[r, c], scales d[r, c / 32]): scl holds the R
// rows' scales as F32, ncb apart, each weight q · d as dequantized.
INLINE T512 __m512 rload512(int dt, const char *p, const float *scl, int ncb, int i, int c, __mmask16 m) {
    if (dt == LB_DTYPE_Q8_0) return _mm512_mul_ps(q8load512(p, m), _mm512_set1_ps(scl[i * ncb + (c >> 5)]));
    return wload512(dt, p, m);
}

INLINE T512 void rows_tile512(int dt, float *y, int ldy, const float *x, int ldx, int G, int R, const char *W, int ldw,
                              const float *scl, int ncb, int C, int r, int beta0, const char *pf, int pfEvery,
                              int pfPhase) {
    const size_t es = wbytes(dt), rowBytes = (size_t)ldw * es;
    __m512 a[4][6];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) a[i][g] = _mm512_setzero_ps();
    const char *w = W + (size_t)r * rowBytes;
    int c = 0;
    int turn = pfPhase;
    for (; c + 16 <= C; c += 16) {
        // A 16-bit row's 16 values are half a line (an 8-bit one's a
        // quarter): prefetch once a line.
        if (pf && turn == 0 && ((c * es) & 63) == 0) {
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) _mm_prefetch(pf + i * rowBytes + c * es, _MM_HINT_T1);
        }
        turn = turn == 0 ? pfEvery - 1 : turn - 1;
        __m512 wv[4];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) wv[i] = rload512(dt, w + i * rowBytes + c * es, scl, ncb, i, c, 0xFFFF);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)g * ldx + c);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) a[i][g] = _mm512_fmadd_ps(wv[i], xv, a[i][g]);
        }
    }
    if (c < C) {
        __mmask16 mk = (__mmask16)((1u << (C - c)) - 1);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) wv[i] = rload512(dt, w + i * rowBytes + c * es, scl, ncb, i, c, mk);
#pragma GCC unroll 6
        for (int g = 0; g < G; g++) {
            __m512 xv = _mm512_maskz_loadu_ps(mk, x + (size_t)g * ldx + c);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) a[i][g] = _mm512_fmadd_ps(wv[i], xv, a[i][g]);
        }
    }
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            float s = _mm512_reduce_add_ps(a[i][g]);
            float *out = y + (size_t)g * ldy + r + i;
            *out = beta0 ? s : *out + s;
        }
}

#define ROWS512_G(DT, R)                                                                                               \
    switch (G) {                                                                                                       \
    case 6:                                                                                                            \
        rows_tile512(DT, ym, ldy, xm, ldx, 6, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    case 5:                                                                                                            \
        rows_tile512(DT, ym, ldy, xm, ldx, 5, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    case 4:                                                                                                            \
        rows_tile512(DT, ym, ldy, xm, ldx, 4, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    case 3:                                                                                                            \
        rows_tile512(DT, ym, ldy, xm, ldx, 3, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    case 2:                                                                                                            \
        rows_tile512(DT, ym, ldy, xm, ldx, 2, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    default:                                                                                                           \
        rows_tile512(DT, ym, ldy, xm, ldx, 1, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);                        \
        break;                                                                                                         \
    }

#define ROWS512_ANY(name, DT)                                                                                          \
    static T512 void name(float *ym, int ldy, const float *xm, int ldx, int G, int R, const char *W, int ldw,          \
                          const float *scl, int ncb, int C, int r, int beta0, const char *pf, int groups, int g) {     \
        switch (R) {                                                                                                   \
        case 4:                                                                                                        \
            ROWS512_G(DT, 4);                                                                                          \
            break;                                                                                                     \
        case 3:                                                                                                        \
            ROWS512_G(DT, 3);                                                                                          \
            break;                                                                                                     \
        case 2:                                                                                                        \
            ROWS512_G(DT, 2);                                                                                          \
            break;                                                                                                     \
        default:                                                                                                       \
            ROWS512_G(DT, 1);                                                                                          \
            break;                                                                                                     \
        }                                                                                                              \
    }
ROWS512_ANY(rows_tile512_f32, LB_DTYPE_F32)
ROWS512_ANY(rows_tile512_bf16, LB_DTYPE_BF16)
ROWS512_ANY(rows_tile512_f16, LB_DTYPE_F16)
ROWS512_ANY(rows_tile512_q8, LB_DTYPE_Q8_0)

// W: F32, or BF16/F16/Q8_0 (dt) converted in registers; C > 8 unless dt is
// F32; for Q8_0 (rows layout, scales d) at most ROWS_Q8_MAX_BLOCKS blocks a row.
enum { ROWS_Q8_MAX_BLOCKS = 256 };
static T512 void gemm_rows_avx512(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *Wv,
                                  const uint16_t *d, int C, int ldw, int r0, int r1, int beta0) {
    if (C <= 8 && dt == LB_DTYPE_F32) {
        // gemv.c's narrow rows (LoRA's B at r ≤ 8): row by row, its sums.
        for (int m = 0; m < M; m++)
            lb_gemv_rows_at(LB_KERNELS_AVX512, y + (size_t)m * ldy, x + (size_t)m * ldx, Wv, C, ldw, r0, r1, beta0);
        return;
    }
    const char *W = Wv;
    const size_t es = wbytes(dt);
    const int ncb = (C + 31) / 32;
    float scl[4 * ROWS_Q8_MAX_BLOCKS];
    for (int r = r0; r < r1; r += 4) {
        int R = r1 - r < 4 ? r1 - r : 4;
        if (dt == LB_DTYPE_Q8_0)
            for (int i = 0; i < R; i++)
                for (int b = 0; b < ncb; b++) scl[i * ncb + b] = _cvtsh_ss(d[(size_t)(r + i) * ncb + b]);
        int groups = (M + 5) / 6;
        const char *pf = r + 4 * ROWS_PF_TILES + 4 <= r1 ? W + (size_t)(r + 4 * ROWS_PF_TILES) * ldw * es : NULL;
        for (int m = 0, g = 0; m < M; m += 6, g++) {
            int G = M - m < 6 ? M - m : 6;
            float *ym = y + (size_t)m * ldy;
            const float *xm = x + (size_t)m * ldx;
            if (dt == LB_DTYPE_BF16)
                rows_tile512_bf16(ym, ldy, xm, ldx, G, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);
            else if (dt == LB_DTYPE_F16)
                rows_tile512_f16(ym, ldy, xm, ldx, G, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);
            else if (dt == LB_DTYPE_Q8_0)
                rows_tile512_q8(ym, ldy, xm, ldx, G, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);
            else
                rows_tile512_f32(ym, ldy, xm, ldx, G, R, W, ldw, scl, ncb, C, r, beta0, pf, groups, g);
        }
    }
}

// ---- AVX2 + FMA ---------------------------------------------------------

// The order of the AVX2 columns form's sums. With AVX2 only (AMD EPYC Zen
// 2), one core reads a weight fastest as several long runs at once: GPT-2's
// 768-column products, split between 2 workers by columns and read 8 rows
// at a time down each worker's half, ran at 60% of a plain read of the
// same bytes (bf16; the wider products at 92–100%), and no software
// prefetch distance changed that. So for cols_split's shapes a product's
// sum is two parts, rows [0, kh) and [kh, K) (kh: half of K, a multiple of
// 32), added at the end (part 0 from y or zero, part 1 from zero), and
// within a part of K' rows, index i takes row spread_row(i, K'/8): rows t,
// t + K'/8, …, t + 7K'/8 for t = 0, 1, … (the rows past 8·(K'/8) last, in
// order). Decode gives each worker one part (lb_gemv_cols_part): whole rows,
// eight runs each. Every entry point of the AVX2 columns form keeps that
// order, so a row's numbers still do not depend on the rows beside it or
// on the worker count; other levels and shapes sum in k order. Q8_0 keeps k
// order (its blocks of 32 rows share a scale).
enum { COLS_SPLIT_MIN = 256, COLS_SPLIT_MAX_N = 2048, COLS_SPLIT_MAX_K = 8192 };
static int cols_split(int dt, int K, int ldw) {
    return dt != LB_DTYPE_Q8_0 && K >= COLS_SPLIT_MIN && K <= COLS_SPLIT_MAX_K && ldw >= COLS_SPLIT_MIN &&
                   ldw < COLS_SPLIT_MAX_N
               ? K / 2 / 32 * 32
               : 0;
}
INLINE int spread_row(int i, int rs) {
    return rs > 1 && i < 8 * rs ? (i & 7) * rs + (i >> 3) : i;
}

// Rows [0, G) × columns [j, j + 8·NV) (the last vector holding lastN) over
// W rows [k0, k1), from xp: the G rows' x over those k, packed k-major
// (xp[6 (k − k0) + g], xs = 6), so that every broadcast comes from one
// pointer; one row of x (decode) is read in place (xs = 1, NV up to 8).
// Index k is row spread_row(k, rs) of W (rs 0: k order).
// W points at bytes: F32, or BF16/F16/Q8_0 (dt) converted to F32 in
// registers as it is loaded (exactly: the same values, the same sums).
// Q8_0 (cols layout, as the AVX-512 kernel's): the block's scales are
// converted once per 32 rows into sc, read as memory operands.
// One row of W (at pk) into the G × NV accumulators, x from xp[g].
INLINE T256 void cols_row256(int dt, __m256 a[6][8], int G, int NV, int lastN, __m256i lm, const char *pk,
                             const float *xp, float sc[8][8]) {
    const size_t es = wbytes(dt);
    __m256 w[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        w[v] = dt == LB_DTYPE_F32 && v == NV - 1 && lastN < 8
                   ? _mm256_maskload_ps((const float *)pk + 8 * v, lm)
                   : lb_wload256(dt, pk + 8 * es * v, v == NV - 1 ? lastN : 8);
        if (dt == LB_DTYPE_Q8_0) w[v] = _mm256_mul_ps(w[v], _mm256_load_ps(sc[v]));
    }
#pragma GCC unroll 6
    for (int g = 0; g < G; g++) {
        __m256 xv = _mm256_broadcast_ss(xp + g);
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) a[g][v] = _mm256_fmadd_ps(xv, w[v], a[g][v]);
    }
}

INLINE T256 void cols_tile256(int dt, float *y, int ldy, const float *xp, int xs, int G, int NV, int lastN,
                              const char *W, const uint16_t *d, int ldw, int k0, int k1, int j, int fromZero, int rs) {
    const size_t es = wbytes(dt), rowBytes = (size_t)ldw * es;
    float sc[8][8] __attribute__((aligned(32)));
    __m256 a[6][8];
    __m256i lm = lb_mask8(lastN);
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            const float *src = y + (size_t)g * ldy + j + 8 * v;
            a[g][v] = fromZero                   ? _mm256_setzero_ps()
                      : v == NV - 1 && lastN < 8 ? _mm256_maskload_ps(src, lm)
                                                 : _mm256_loadu_ps(src);
        }
    if (rs > 1) {
        // Indices in groups of 8 take rows t, t + rs, …, t + 7·rs
        // (spread_row); past 8·rs, rows in order. F32/BF16/F16 only.
        const size_t spreadBytes = (size_t)rs * rowBytes;
        for (int k = k0; k < k1;) {
            if (k < 8 * rs && !(k & 7) && k + 8 <= k1) {
                const char *q = W + ((size_t)(k >> 3) * ldw + j) * es;
                for (int r = 0; r < 8; r++, q += spreadBytes, xp += xs) cols_row256(dt, a, G, NV, lastN, lm, q, xp, sc);
                k += 8;
            } else {
                cols_row256(dt, a, G, NV, lastN, lm, W + ((size_t)spread_row(k, rs) * ldw + j) * es, xp, sc);
                k++, xp += xs;
            }
        }
    } else {
        const char *p = W + ((size_t)k0 * ldw + j) * es;
        // Q8_0: a block of 32 rows at a time, its scales converted first.
        for (int kb = k0, ke; kb < k1; kb = ke) {
            ke = dt == LB_DTYPE_Q8_0 && (kb / 32 + 1) * 32 < k1 ? (kb / 32 + 1) * 32 : k1;
            if (dt == LB_DTYPE_Q8_0) {
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    _mm256_store_ps(sc[v],
                                    lb_wload256(LB_DTYPE_F16, (const char *)(d + (size_t)(kb / 32) * ldw + j + 8 * v),
                                                v == NV - 1 ? lastN : 8));
            }
            for (int k = kb; k < ke; k++, p += rowBytes, xp += xs) cols_row256(dt, a, G, NV, lastN, lm, p, xp, sc);
        }
    }
#pragma GCC unroll 6
    for (int g = 0; g < G; g++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            float *dst = y + (size_t)g * ldy + j + 8 * v;
            if (v == NV - 1 && lastN < 8)
                _mm256_maskstore_ps(dst, lm, a[g][v]);
            else
                _mm256_storeu_ps(dst, a[g][v]);
        }
}

// Full last vectors (lastN 8) get plain loads and stores: a masked load is
// two micro-ops on Zen 2 and held a register the 6 × 2 tile needs.
#define COLS256(DT, G_, NV_, RS)                                                                                       \
    do {                                                                                                               \
        if (lastN == 8)                                                                                                \
            cols_tile256(DT, y, ldy, xp, 6, G_, NV_, 8, W, d, ldw, k0, k1, j, fromZero, RS);                           \
        else                                                                                                           \
            cols_tile256(DT, y, ldy, xp, 6, G_, NV_, lastN, W, d, ldw, k0, k1, j, fromZero, RS);                       \
    } while (0)
#define COLS256_G(DT, NV_, RS)                                                                                         \
    switch (G) {                                                                                                       \
    case 6:                                                                                                            \
        COLS256(DT, 6, NV_, RS);                                                                                       \
        break;                                                                                                         \
    case 5:                                                                                                            \
        COLS256(DT, 5, NV_, RS);                                                                                       \
        break;                                                                                                         \
    case 4:                                                                                                            \
        COLS256(DT, 4, NV_, RS);                                                                                       \
        break;                                                                                                         \
    case 3:                                                                                                            \
        COLS256(DT, 3, NV_, RS);                                                                                       \
        break;                                                                                                         \
    case 2:                                                                                                            \
        COLS256(DT, 2, NV_, RS);                                                                                       \
        break;                                                                                                         \
    default:                                                                                                           \
        COLS256(DT, 1, NV_, RS);                                                                                       \
        break;                                                                                                         \
    }

// NV ≤ 2 (16 columns), G ≤ 6.
#define COLS256_ANY(name, DT, RS)                                                                                      \
    static T256 void name(float *y, int ldy, const float *xp, int G, int NV, int lastN, const char *W,                 \
                          const uint16_t *d, int ldw, int k0, int k1, int j, int fromZero, int rs) {                   \
        (void)rs;                                                                                                      \
        if (NV == 2) {                                                                                                 \
            COLS256_G(DT, 2, RS);                                                                                      \
        } else {                                                                                                       \
            COLS256_G(DT, 1, RS);                                                                                      \
        }                                                                                                              \
    }
// The instances of a tile kernel: each dtype in k order (RS 0, a constant),
// and F32/BF16/F16 in the spread order (RS rs, the argument).
#define TILE256_INSTANCES(MAKE, name)                                                                                  \
    MAKE(name##_f32, LB_DTYPE_F32, 0)                                                                                  \
    MAKE(name##_bf16, LB_DTYPE_BF16, 0)                                                                                \
    MAKE(name##_f16, LB_DTYPE_F16, 0)                                                                                  \
    MAKE(name##_q8, LB_DTYPE_Q8_0, 0)                                                                                  \
    MAKE(name##_f32_spread, LB_DTYPE_F32, rs)                                                                          \
    MAKE(name##_bf16_spread, LB_DTYPE_BF16, rs)                                                                        \
    MAKE(name##_f16_spread, LB_DTYPE_F16, rs)
TILE256_INSTANCES(COLS256_ANY, cols_tile256)

// One row of x over a tile of W (rows [k0, k1), columns [j0, j1)): strips
// of 64 columns, then of 8 (the last one partial). Each 64-column strip
// first prefetches the one ONE256_PF_STRIPS ahead (in this tile, or the
// next tile's, t), all its rows, into L1.
enum { ONE256_TILE_ROWS = 8, ONE256_TILE_BYTES = 8192, ONE256_PF_STRIPS = 2 };
INLINE T256 void one_tile256(int dt, float *y, const float *x, const char *W, const uint16_t *d, int ldw, int k0,
                             int k1, int j0, int j1, int fromZero, const lb_tile *t, int hasNext, int rs) {
    const size_t es = wbytes(dt), rowBytes = (size_t)ldw * es;
    int j = j0;
    for (; j + 64 <= j1; j += 64) {
        int ja = j + 64 * ONE256_PF_STRIPS, c = hasNext ? t->c0 + (ja - j1) : 0;
        const char *pf = NULL;
        int rows = 0;
        // Spread rows are eight runs the hardware prefetchers follow.
        if (rs <= 1 && ja < j1)
            pf = W + ((size_t)k0 * ldw + ja) * es, rows = k1 - k0;
        else if (rs <= 1 && hasNext && c < t->c1)
            pf = W + ((size_t)t->r0 * ldw + c) * es, rows = t->nrows;
        for (int r = 0; r < rows; r++) {
            const char *q = pf + (size_t)r * rowBytes;
            for (size_t b = 0; b < 64 * es; b += 64) _mm_prefetch(q + b, _MM_HINT_T0);
            // Off a line's start, the strip's last bytes are in one more line.
            if ((uintptr_t)q & 63) _mm_prefetch(q + 64 * es - 1, _MM_HINT_T0);
        }
        cols_tile256(dt, y, 0, x + k0, 1, 1, 8, 8, W, d, ldw, k0, k1, j, fromZero, rs);
    }
    for (; j < j1; j += 8) {
        int n = j1 - j < 8 ? j1 - j : 8;
        if (n == 8)
            cols_tile256(dt, y, 0, x + k0, 1, 1, 1, 8, W, d, ldw, k0, k1, j, fromZero, rs);
        else
            cols_tile256(dt, y, 0, x + k0, 1, 1, 1, n, W, d, ldw, k0, k1, j, fromZero, rs);
    }
}

#define ONE256(name, DT, RS)                                                                                           \
    static T256 void name(float *y, const float *x, const char *W, const uint16_t *d, int ldw, int k0, int k1, int j0, \
                          int j1, int fromZero, const lb_tile *t, int hasNext, int rs) {                               \
        (void)rs;                                                                                                      \
        one_tile256(DT, y, x, W, d, ldw, k0, k1, j0, j1, fromZero, t, hasNext, RS);                                    \
    }
TILE256_INSTANCES(ONE256, one_tile256)

// Decode's products on AVX2: tiles of ONE256_TILE_ROWS rows ×
// ONE256_TILE_BYTES of each row (runs the hardware prefetchers follow), in
// column strips, top to bottom; one call per tile, the strips inside it
// (a call per strip cost as much as its 8 rows' arithmetic). AMD EPYC Zen
// 2, GPT-2's 48 block products, weights from memory, 2 threads (C
// microbenchmark, medians of alternating rounds): bf16 11.3 → 8.6–9.0 ms
// and q8_0 8.1 → 6.0 ms against lowp.c's former 64-column blocks down all
// rows (which read the weights at 15 and 10 GB/s); F32 within the noise of
// the tiles before (the same 8 × 2048, without the prefetch).
static T256 void gemv_cols_avx2_tiles(int dt, float *y, const float *x, const void *Wv, const uint16_t *d, int K,
                                      int ldw, int n0, int n1, int beta0, int rs) {
    const char *W = Wv;
    const int tileRows = ONE256_TILE_ROWS, tileCols = ONE256_TILE_BYTES / (int)wbytes(dt);
    // A spread order reads x in that order too (K ≤ COLS_SPLIT_MAX_K).
    float xs[COLS_SPLIT_MAX_K] __attribute__((aligned(32)));
    if (rs > 1) {
        for (int k = 0; k < K; k++) xs[k] = x[spread_row(k, rs)];
        x = xs;
    }
    for (int jt = n0; jt < n1; jt += tileCols) {
        int jt1 = n1 - jt < tileCols ? n1 : jt + tileCols;
        for (int k0 = 0; k0 < K; k0 += tileRows) {
            int k1 = K - k0 < tileRows ? K : k0 + tileRows, z = k0 == 0 && beta0;
            lb_tile t;
            int hasNext = lb_tile_ahead(n0, n1, K, tileRows, tileCols, jt, k0, 1, &t);
            if (rs > 1 && dt == LB_DTYPE_BF16)
                one_tile256_bf16_spread(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else if (rs > 1 && dt == LB_DTYPE_F16)
                one_tile256_f16_spread(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else if (rs > 1)
                one_tile256_f32_spread(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else if (dt == LB_DTYPE_BF16)
                one_tile256_bf16(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else if (dt == LB_DTYPE_F16)
                one_tile256_f16(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else if (dt == LB_DTYPE_Q8_0)
                one_tile256_q8(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
            else
                one_tile256_f32(y, x, W, d, ldw, k0, k1, jt, jt1, z, &t, hasNext, rs);
        }
    }
}

// Tiles of W in column strips, top to bottom, as the AVX-512 kernel's: in
// each tile, 16 columns at a time stay in L1 while the groups of 6 rows
// pass over them. The strip COLS256_PF_STRIPS ahead (in this tile, or the
// next tile's) is prefetched into L1, each group issuing its share of its
// rows. One row of x (decode) goes through gemv_cols_avx2_tiles above. At
// most COLS256_ROWS rows of x at a time (the packed x's size). Rows of W
// in the order spread_row(·, rs) gives (x packed in that order).
// Measured on AMD EPYC Zen 2 (GPT-2's 48 block products, weights from
// memory; the kernel before: 16-column strips of 64 rows, no prefetch):
// 16 rows, 1 thread, 108 → 65 ms with the tile two ahead prefetched as on
// AVX-512, then 58–60 ms with the strip prefetch instead (on AMD a
// prefetch into L2 also fills L1, and 128 KiB ahead evicted the strips in
// use; 2 threads: 35 → 30 ms, minima of five rounds).
enum { COLS256_ROWS = 132, COLS256_TILE_ROWS = 32, COLS256_TILE_COLS = 512, COLS256_PF_STRIPS = 2 };
// 2 to COLS256_ROWS rows of x; rs: 0 in the k-order instance, so that its
// spread branches fold away.
INLINE T256 void cols_avx2_many(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *Wv,
                                const uint16_t *d, int K, int ldw, int n0, int n1, int beta0, int rs) {
    const char *W = Wv;
    const size_t es = wbytes(dt);
    float xp[COLS256_ROWS * COLS256_TILE_ROWS] __attribute__((aligned(32)));
    const int tileRows = COLS256_TILE_ROWS, tileCols = COLS256_TILE_COLS, sw = 16, groups = (M + 5) / 6;
    for (int jt = n0; jt < n1; jt += tileCols) {
        int jt1 = n1 - jt < tileCols ? n1 : jt + tileCols;
        for (int k0 = 0; k0 < K; k0 += tileRows) {
            int k1 = K - k0 < tileRows ? K : k0 + tileRows;
            lb_tile next;
            int hasNext = lb_tile_ahead(n0, n1, K, tileRows, tileCols, jt, k0, 1, &next);
            // Spread order: this tile's rows and the next tile's (the
            // prefetch's), looked up, not recomputed in the loops below.
            int row[COLS256_TILE_ROWS];
            size_t off[2][COLS256_TILE_ROWS];
            if (rs > 1) {
                for (int k = k0; k < k1; k++)
                    row[k - k0] = spread_row(k, rs), off[0][k - k0] = (size_t)row[k - k0] * ldw * es;
                for (int r = 0; hasNext && r < next.nrows; r++)
                    off[1][r] = (size_t)spread_row(next.r0 + r, rs) * ldw * es;
            }
            for (int m = 0; m < M; m++) {
                float *dst = xp + (size_t)(m / 6) * tileRows * 6 + m % 6;
                const float *xm = x + (size_t)m * ldx;
                if (rs > 1)
                    for (int k = k0; k < k1; k++) dst[6 * (k - k0)] = xm[row[k - k0]];
                else
                    for (int k = k0; k < k1; k++) dst[6 * (k - k0)] = xm[k];
            }
            for (int j = jt; j < jt1; j += sw) {
                int width = jt1 - j < sw ? jt1 - j : sw;
                int NV = (width + 7) / 8;
                int lastN = width - 8 * (NV - 1);
                // The strip COLS256_PF_STRIPS ahead: its column and rows.
                int pfc = 0, pfk = 0, pfRows = 0, ja = j + COLS256_PF_STRIPS * sw,
                    c = hasNext ? next.c0 + (ja - jt1) : 0;
                const size_t *pfOff = off[0];
                if (ja < jt1)
                    pfc = ja, pfk = k0, pfRows = k1 - k0;
                else if (hasNext && c < next.c1)
                    pfc = c, pfk = next.r0, pfRows = next.nrows, pfOff = off[1];
                // A strip's 16 columns may span two lines.
                int second =
                    pfRows && ((((uintptr_t)W + (size_t)pfc * es) & 63) + 16 * es > 64 || ((size_t)ldw * es) % 64);
                for (int m = 0, g = 0; m < M; m += 6, g++) {
                    const char *pf = W + ((size_t)pfk * ldw + pfc) * es;
                    for (int r = g; r < pfRows; r += groups) {
                        const char *q = rs > 1 ? W + pfOff[r] + (size_t)pfc * es : pf + (size_t)r * ldw * es;
                        _mm_prefetch(q, _MM_HINT_T0);
                        if (second) _mm_prefetch(q + 16 * es - 1, _MM_HINT_T0);
                    }
                    float *ym = y + (size_t)m * ldy;
                    const float *xg = xp + (size_t)g * tileRows * 6;
                    int G = M - m < 6 ? M - m : 6, z = k0 == 0 && beta0;
                    if (rs > 1 && dt == LB_DTYPE_BF16)
                        cols_tile256_bf16_spread(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else if (rs > 1 && dt == LB_DTYPE_F16)
                        cols_tile256_f16_spread(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else if (rs > 1)
                        cols_tile256_f32_spread(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else if (dt == LB_DTYPE_BF16)
                        cols_tile256_bf16(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else if (dt == LB_DTYPE_F16)
                        cols_tile256_f16(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else if (dt == LB_DTYPE_Q8_0)
                        cols_tile256_q8(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                    else
                        cols_tile256_f32(ym, ldy, xg, G, NV, lastN, W, d, ldw, k0, k1, j, z, rs);
                }
            }
        }
    }
}

static T256 void cols_avx2_many_k(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *W,
                                  const uint16_t *d, int K, int ldw, int n0, int n1, int beta0) {
    cols_avx2_many(dt, y, ldy, x, ldx, M, W, d, K, ldw, n0, n1, beta0, 0);
}
static T256 void cols_avx2_many_spread(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *W, int K,
                                       int ldw, int n0, int n1, int beta0, int rs) {
    cols_avx2_many(dt, y, ldy, x, ldx, M, W, NULL, K, ldw, n0, n1, beta0, rs);
}

static T256 void cols_avx2_rows(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *Wv,
                                const uint16_t *d, int K, int ldw, int n0, int n1, int beta0, int rs) {
    if (M > COLS256_ROWS) {
        for (int m = 0; m < M; m += COLS256_ROWS)
            cols_avx2_rows(dt, y + (size_t)m * ldy, ldy, x + (size_t)m * ldx, ldx,
                           M - m < COLS256_ROWS ? M - m : COLS256_ROWS, Wv, d, K, ldw, n0, n1, beta0, rs);
    } else if (M == 1) {
        gemv_cols_avx2_tiles(dt, y, x, Wv, d, K, ldw, n0, n1, beta0, rs);
    } else if (rs > 1) {
        cols_avx2_many_spread(dt, y, ldy, x, ldx, M, Wv, K, ldw, n0, n1, beta0, rs);
    } else {
        cols_avx2_many_k(dt, y, ldy, x, ldx, M, Wv, d, K, ldw, n0, n1, beta0);
    }
}

// One part of a split product (cols_split): rows [0, kh) or [kh, K), each
// in its spread order; part 1 starts from zero.
static T256 void cols_avx2_part(int dt, int part, int kh, float *y, int ldy, const float *x, int ldx, int M,
                                const void *Wv, int K, int ldw, int n0, int n1, int beta0) {
    const char *W = Wv;
    if (part == 0)
        cols_avx2_rows(dt, y, ldy, x, ldx, M, W, NULL, kh, ldw, n0, n1, beta0, kh / 8);
    else
        cols_avx2_rows(dt, y, ldy, x + kh, ldx, M, W + (size_t)kh * ldw * wbytes(dt), NULL, K - kh, ldw, n0, n1, 1,
                       (K - kh) / 8);
}

// The AVX2 columns form: y (+)= x·W over columns [n0, n1), each output the
// k-order sum, or for cols_split's shapes the two parts' sums added.
static T256 void gemm_cols_avx2(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *Wv,
                                const uint16_t *d, int K, int ldw, int n0, int n1, int beta0) {
    int kh = cols_split(dt, K, ldw), width = n1 - n0;
    if (!kh) {
        cols_avx2_rows(dt, y, ldy, x, ldx, M, Wv, d, K, ldw, n0, n1, beta0, 0);
        return;
    }
    float stackPart[COLS_SPLIT_MAX_N] __attribute__((aligned(32)));
    float *hi = (size_t)M * width <= COLS_SPLIT_MAX_N ? stackPart : lb_thread_scratch_slot(1, (size_t)M * width);
    if (!hi) {
        // No memory for all rows' second parts: a few rows at a time (the
        // same numbers: each row's sums are its own).
        int step = COLS_SPLIT_MAX_N / width;
        for (int m = 0; m < M; m += step)
            gemm_cols_avx2(dt, y + (size_t)m * ldy, ldy, x + (size_t)m * ldx, ldx, M - m < step ? M - m : step, Wv, d,
                           K, ldw, n0, n1, beta0);
        return;
    }
    cols_avx2_part(dt, 0, kh, y, ldy, x, ldx, M, Wv, K, ldw, n0, n1, beta0);
    cols_avx2_part(dt, 1, kh, hi, width, x, ldx, M, (const char *)Wv + (size_t)n0 * wbytes(dt), K, ldw, 0, width, 1);
    for (int m = 0; m < M; m++) {
        float *ym = y + (size_t)m * ldy + n0;
        const float *hm = hi + (size_t)m * width;
        for (int j = 0; j < width; j++) ym[j] += hm[j];
    }
}

#define ROWS256(DT, G_, R_) lb_rows_tile256_dt(DT, ym, ldy, xm, ldx, G_, R_, W, d, ncb, ldw, C, r, 1, beta0)
#define ROWS256_G(DT, R_)                                                                                              \
    switch (G) {                                                                                                       \
    case 4:                                                                                                            \
        ROWS256(DT, 4, R_);                                                                                            \
        break;                                                                                                         \
    case 3:                                                                                                            \
        ROWS256(DT, 3, R_);                                                                                            \
        break;                                                                                                         \
    case 2:                                                                                                            \
        ROWS256(DT, 2, R_);                                                                                            \
        break;                                                                                                         \
    default:                                                                                                           \
        ROWS256(DT, 1, R_);                                                                                            \
        break;                                                                                                         \
    }

// W rows [r, r + R) × x rows [m, m + G), R ≤ 3, G ≤ 4.
#define ROWS256_ANY(name, DT)                                                                                          \
    static T256 void name(float *ym, int ldy, const float *xm, int ldx, int G, int R, const void *W,                   \
                          const uint16_t *d, int ncb, int ldw, int C, int r, int beta0) {                              \
        switch (R) {                                                                                                   \
        case 3:                                                                                                        \
            ROWS256_G(DT, 3);                                                                                          \
            break;                                                                                                     \
        case 2:                                                                                                        \
            ROWS256_G(DT, 2);                                                                                          \
            break;                                                                                                     \
        default:                                                                                                       \
            ROWS256_G(DT, 1);                                                                                          \
            break;                                                                                                     \
        }                                                                                                              \
    }
ROWS256_ANY(rows_tile256_f32, LB_DTYPE_F32)
ROWS256_ANY(rows_tile256_bf16, LB_DTYPE_BF16)
ROWS256_ANY(rows_tile256_f16, LB_DTYPE_F16)
ROWS256_ANY(rows_tile256_q8, LB_DTYPE_Q8_0)

// Tiles of 3 rows of W (held in registers) × 4 rows of x: 12 sums, 7 loads
// for 12 fused multiply-adds (the kernel before: 2 × 2, 4 loads for 4).
// No prefetch: it was no faster. AMD EPYC Zen 2, 1 thread, the tied LM
// head [50257, 768] for 16 rows of x: 43–52 → 26–31 ms. W: F32, or
// BF16/F16/Q8_0 (rows layout) converted in registers, as the cols kernel's.
static T256 void gemm_rows_avx2(int dt, float *y, int ldy, const float *x, int ldx, int M, const void *W,
                                const uint16_t *d, int C, int ldw, int r0, int r1, int beta0) {
    if (C <= 8 && dt == LB_DTYPE_F32) {
        // gemv.c's narrow rows (LoRA's B at r ≤ 8): row by row, its sums.
        for (int m = 0; m < M; m++)
            lb_gemv_rows_at(LB_KERNELS_AVX2, y + (size_t)m * ldy, x + (size_t)m * ldx, W, C, ldw, r0, r1, beta0);
        return;
    }
    const int ncb = (C + 31) / 32;
    for (int r = r0, R; r < r1; r += R) {
        R = r1 - r < 3 ? r1 - r : 3;
        for (int m = 0; m < M; m += 4) {
            int G = M - m < 4 ? M - m : 4;
            float *ym = y + (size_t)m * ldy;
            const float *xm = x + (size_t)m * ldx;
            if (dt == LB_DTYPE_BF16)
                rows_tile256_bf16(ym, ldy, xm, ldx, G, R, W, d, ncb, ldw, C, r, beta0);
            else if (dt == LB_DTYPE_F16)
                rows_tile256_f16(ym, ldy, xm, ldx, G, R, W, d, ncb, ldw, C, r, beta0);
            else if (dt == LB_DTYPE_Q8_0)
                rows_tile256_q8(ym, ldy, xm, ldx, G, R, W, d, ncb, ldw, C, r, beta0);
            else
                rows_tile256_f32(ym, ldy, xm, ldx, G, R, W, d, ncb, ldw, C, r, beta0);
        }
    }
}

#endif

void lb_gemm_cols(float *y, int ldy, const float *x, int ldx, int M, const float *W, int K, int ldw, int n0, int n1,
                  int beta0) {
    lb_gemm_cols_at(lb_kernels_level(), y, ldy, x, ldx, M, W, K, ldw, n0, n1, beta0);
}

void lb_gemm_rows(float *y, int ldy, const float *x, int ldx, int M, const float *W, int C, int ldw, int r0, int r1,
                  int beta0) {
    lb_gemm_rows_at(lb_kernels_level(), y, ldy, x, ldx, M, W, C, ldw, r0, r1, beta0);
}

void lb_gemm_cols_at(int level, float *y, int ldy, const float *x, int ldx, int M, const float *W, int K, int ldw,
                     int n0, int n1, int beta0) {
    if (M <= 0 || n1 <= n0) return;
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512()) {
        gemm_cols_avx512(LB_DTYPE_F32, y, ldy, x, ldx, M, W, NULL, K, ldw, n0, n1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma()) {
        gemm_cols_avx2(LB_DTYPE_F32, y, ldy, x, ldx, M, W, NULL, K, ldw, n0, n1, beta0);
        return;
    }
#endif
    for (int m = 0; m < M; m++)
        lb_gemv_cols_at(level, y + (size_t)m * ldy, x + (size_t)m * ldx, W, K, ldw, n0, n1, beta0);
}

int lb_cols_split_at(int level, int dtype, int K, int ldw) {
#if defined(__x86_64__)
    if (avx2_runs(level)) return cols_split(dtype, K, ldw);
#endif
    (void)level, (void)dtype, (void)K, (void)ldw;
    return 0;
}

void lb_gemv_cols_part(int level, int dtype, float *y, const float *x, const void *W, int K, int ldw, int part, int n0,
                       int n1, int beta0) {
    if (n1 <= n0) return;
#if defined(__x86_64__)
    int kh = lb_cols_split_at(level, dtype, K, ldw);
    if (kh && (part == 0 || part == 1)) {
        cols_avx2_part(dtype, part, kh, y, 0, x, 0, 1, W, K, ldw, n0, n1, beta0);
        return;
    }
#endif
    (void)level, (void)dtype, (void)y, (void)x, (void)W, (void)K, (void)ldw, (void)part, (void)beta0;
}

void lb_gemm_rows_at(int level, float *y, int ldy, const float *x, int ldx, int M, const float *W, int C, int ldw,
                     int r0, int r1, int beta0) {
    if (M <= 0 || r1 <= r0) return;
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512()) {
        gemm_rows_avx512(LB_DTYPE_F32, y, ldy, x, ldx, M, W, NULL, C, ldw, r0, r1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma()) {
        gemm_rows_avx2(LB_DTYPE_F32, y, ldy, x, ldx, M, W, NULL, C, ldw, r0, r1, beta0);
        return;
    }
#endif
    for (int m = 0; m < M; m++)
        lb_gemv_rows_at(level, y + (size_t)m * ldy, x + (size_t)m * ldx, W, C, ldw, r0, r1, beta0);
}

// ---- the same on a reduced-precision weight (lowp.c's dtypes) -----------
//
// With AVX-512 or AVX2 (lb_lowp_in_registers), BF16 and F16 weights, and
// Q8_0 in the layout of its product (scales along the sum: cols layout for
// the cols form, rows layout for the rows form), go through the kernels
// above, which convert each vector of 16 (or 8) weights to F32 in
// registers as they load it (exactly: the same values, the same sums, the
// same bits as the F32 kernels on the dequantized weight), with the F32
// tiles and prefetches. On the AMD EPYC Zen 2 (AVX2) `lora bench engine
// --sequences 16`, 16 distinct adapters: bf16 115–132 → 261–308 tok/s,
// q8_0 116 → 274 (tiles → registers; F32 298 in the same hour).
// Otherwise (baseline, Q8_0 in the other layout) the weight is
// converted a tile at a time (64 columns × KB rows on the stack; for the
// rows form, a few whole rows of W in the caller's scratch) right before the
// rows use it, and the F32 kernels run on the tile, with the same result.
// The next tile's weights are prefetched while this one is multiplied:
// without that, converting whole 1 MiB panels first and multiplying them
// from L2 ran 16 BF16 sequences at 315–326 tok/s, tiles without the
// prefetch at 307–319, with it at 397–420 (Intel Emerald Rapids).
// The tiles' conversion does not overlap the arithmetic well: on the AMD
// EPYC (Zen 4: one 512-bit FMA a cycle, 32 KiB L1) the 48 block products for
// 16 rows took 72 ms on 2 threads against F32's 22 (a C microbenchmark), in
// registers 19–21 ms; `lora bench engine --dtype bf16`, 16 distinct
// adapters: 212–239 → 345–391 tok/s. On Intel Emerald Rapids (2026-12-02, a
// slow hour of the host; the same microbenchmark with the LM head's rows,
// medians of 9–15 alternating runs, tiles → registers): the 48 block
// products for 16 rows bf16 67 → 37 ms, f16 55 → 32, q8_0 35 → 32; the
// head bf16 17.5 → 10.8, f16 14.2 → 9.5, q8_0 13.1 → 10.8. At 80 rows (a
// prompt joining 16 busy sequences) bf16 112 → 109 ms, f16 103 → 97, but
// q8_0 83 → 106: its conversion (two conversions and a product a vector,
// once per group of 6 rows) then costs more than the tile's, so Q8_0 goes
// in registers only up to COLS_WIDE_MAX_M rows.

enum { LOWP_TILE_COLS = 64 };

static _Atomic int lowp_registers_override = -1;

void lb_set_lowp_in_registers(int v) {
    lowp_registers_override = v < 0 ? -1 : v != 0;
}

int lb_lowp_in_registers(void) {
    int v = lowp_registers_override;
    if (v >= 0) return v;
#if defined(__x86_64__)
    return lb_cpu_has_avx512() || lb_cpu_has_avx2_fma();
#else
    return 0;
#endif
}

int lb_lowp_wide_decode(void) {
    int v = lowp_registers_override;
    if (v >= 0) return v;
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") && lb_cpu_has_avx512();
#else
    return 0;
#endif
}

// Prefetches rows [k0, k0 + kb) × LOWP_TILE_COLS columns from j of a
// row-major weight of `es`-byte values and row length ldw.
static void prefetch_tile(const void *W, size_t es, int ldw, int k0, int kb, int j) {
#if defined(__x86_64__)
    for (int k = k0; k < k0 + kb; k++) {
        const char *q = (const char *)W + ((size_t)k * ldw + j) * es;
        for (size_t b = 0; b < LOWP_TILE_COLS * es; b += 64) _mm_prefetch(q + b, _MM_HINT_T0);
    }
#else
    (void)W, (void)es, (void)ldw, (void)k0, (void)kb, (void)j;
#endif
}

void lb_gemm_cols_lowp_at(int level, int dtype, int cols_layout, float *y, int ldy, const float *x, int ldx, int M,
                          const void *W, const uint16_t *d, int K, int ldw, int n0, int n1, int beta0) {
    if (M <= 0 || n1 <= n0) return;
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512() &&
        (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16 ||
         (dtype == LB_DTYPE_Q8_0 && cols_layout && M <= COLS_WIDE_MAX_M)) &&
        lb_lowp_in_registers()) {
        gemm_cols_avx512(dtype, y, ldy, x, ldx, M, W, d, K, ldw, n0, n1, beta0);
        return;
    }
    // cols_split's shapes always (the panels below sum in k order).
    if (avx2_runs(level) &&
        (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16 ||
         (dtype == LB_DTYPE_Q8_0 && cols_layout && M <= COLS_WIDE_MAX_M)) &&
        (lb_lowp_in_registers() || cols_split(dtype, K, ldw))) {
        gemm_cols_avx2(dtype, y, ldy, x, ldx, M, W, d, K, ldw, n0, n1, beta0);
        return;
    }
#endif
    float tile[KB * LOWP_TILE_COLS] __attribute__((aligned(64)));
    size_t es = dtype == LB_DTYPE_Q8_0 ? 1 : 2;
    for (int j = n0; j < n1; j += LOWP_TILE_COLS) {
        int width = n1 - j < LOWP_TILE_COLS ? n1 - j : LOWP_TILE_COLS;
        for (int k0 = 0; k0 < K; k0 += KB) {
            int kb = K - k0 < KB ? K - k0 : KB;
            lb_dequant_panel_at(level, dtype, cols_layout, tile, width, W, d, ldw, k0, k0 + kb, j, j + width);
            // The next tile (down this strip, or the next strip's first).
            if (k0 + KB < K)
                prefetch_tile(W, es, ldw, k0 + KB, K - k0 - KB < KB ? K - k0 - KB : KB, j);
            else if (j + LOWP_TILE_COLS < n1)
                prefetch_tile(W, es, ldw, 0, K < KB ? K : KB, j + LOWP_TILE_COLS);
            lb_gemm_cols_at(level, y + j, ldy, x + k0, ldx, M, tile, kb, width, 0, width, beta0 && k0 == 0);
        }
    }
}

void lb_gemm_rows_lowp_at(int level, int dtype, int cols_layout, float *y, int ldy, const float *x, int ldx, int M,
                          const void *W, const uint16_t *d, int C, int r0, int r1, int beta0, float *tile,
                          size_t tileFloats) {
    if (M <= 0 || r1 <= r0 || C <= 0 || tileFloats < (size_t)C) return;
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512() && C > 8 &&
        (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16 ||
         (dtype == LB_DTYPE_Q8_0 && !cols_layout && M <= COLS_WIDE_MAX_M && (C + 31) / 32 <= ROWS_Q8_MAX_BLOCKS)) &&
        lb_lowp_in_registers()) {
        gemm_rows_avx512(dtype, y, ldy, x, ldx, M, W, d, C, C, r0, r1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma() &&
        (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16 ||
         (dtype == LB_DTYPE_Q8_0 && !cols_layout && M <= COLS_WIDE_MAX_M)) &&
        lb_lowp_in_registers()) {
        gemm_rows_avx2(dtype, y, ldy, x, ldx, M, W, d, C, C, r0, r1, beta0);
        return;
    }
#endif
    // A few whole rows at a time, 24 KiB (8 of the LM head's 768 values).
    size_t fit = tileFloats / (size_t)C, want = (size_t)LB_ROWS_TILE_FLOATS / (size_t)C;
    int rows = (int)(want < 1 ? 1 : want < fit ? want : fit);
    for (int r = r0; r < r1; r += rows) {
        int n = r1 - r < rows ? r1 - r : rows;
        lb_dequant_panel_at(level, dtype, cols_layout, tile, C, W, d, C, r, r + n, 0, C);
        lb_gemm_rows_at(level, y + r, ldy, x, ldx, M, tile, C, C, 0, n, beta0);
    }
}
