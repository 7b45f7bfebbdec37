// Matrix–vector products for decode (one token: every weight is read once
// and used once, so the speed is the memory bandwidth's).
//
// OpenBLAS 0.3.21's sgemv reached 22–25 GB/s on GPT-2's shapes inside
// liblora on the Intel machine, where a plain sweep reads 29–31 GB/s: these
// kernels stream each weight once with wide loads, FMA into registers and
// no packing. Compiled for AVX-512 and AVX2+FMA, picked at run time; on
// other CPUs the callers use OpenBLAS.
//
// Each output's sum runs in the same order whatever range of outputs a call
// covers, so results do not depend on how the outputs are split across
// threads:
// - cols: y[n] = y0[n] + Σ_k x[k]·W[k, n], one fused multiply-add per k in
//   k order (GPT-2's Conv1D weight [in, out]);
// - rows: y[r] = y0[r] + Σ_c W[r, c]·x[c], 16 (or 8) partial sums over c
//   added by a fixed tree (the tied LM head [vocab, C]).
#include "lora_support.h"
#include "simd256.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__)

#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define T256   __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline
// Rows of W prefetched ahead, into L2: without it a column block's rows (8
// lines each, a row length apart) are fetched only as far ahead as
// out-of-order execution reaches (measured +7% on GPT-2's Conv1D weights,
// Intel Emerald Rapids). Into L2 rather than L1, 16 rows ahead: L1's few
// line-fill buffers capped the lines in flight; on the AMX machine (Intel,
// KVM model 167) GPT-2's 48 block weights and LM head stream at 22-25 GB/s
// on 2 threads instead of 15-16 (8 rows into L1), as a plain read does.
enum { GPFD = 16 };

// ---- AVX-512 ---------------------------------------------------------

// Columns [j, j + 16·nv) (the last vector masked by `last`) over all K rows.
INLINE T512 void cols_block512(float *y, const float *x, const float *W, int K, int ldw, int j, int nv, __mmask16 last,
                               int beta0) {
    __m512 acc[8];
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        acc[v] = beta0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + j + 16 * v);
    }
    const float *p = W + j;
    for (int k = 0; k < K; k++, p += ldw) {
        if (k + GPFD < K)
            for (int v = 0; v < nv; v++) _mm_prefetch((const char *)(p + (size_t)GPFD * ldw + 16 * v), _MM_HINT_T1);
        __m512 xv = _mm512_set1_ps(x[k]);
        for (int v = 0; v < nv; v++) {
            __mmask16 m = v == nv - 1 ? last : 0xFFFF;
            acc[v] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, p + 16 * v), acc[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        __mmask16 m = v == nv - 1 ? last : 0xFFFF;
        _mm512_mask_storeu_ps(y + j + 16 * v, m, acc[v]);
    }
}

static T512 void gemv_cols_avx512(float *y, const float *x, const float *W, int K, int ldw, int n0, int n1, int beta0) {
    int j = n0;
    // When every row starts at the same offset within a cache line, peel to
    // make the wide blocks' loads aligned (8% faster on misaligned weights,
    // e.g. tensors at 8-byte offsets in a safetensors file).
    if (ldw % 16 == 0) {
        int mis = (int)(((uintptr_t)(W + j) & 63) / 4);
        if (mis) {
            int w = 16 - mis < n1 - j ? 16 - mis : n1 - j;
            cols_block512(y, x, W, K, ldw, j, 1, (__mmask16)((1u << w) - 1), beta0);
            j += w;
        }
    }
    // Wide products (GPT-2's Conv1D weights): gemm_small.c's tiles of 32
    // rows × 512 columns, two prefetched ahead, on this one row. The same
    // sums in the same order; the reads run further ahead than this
    // kernel's 16 rows of 128 columns (48 block products on the AMX
    // machine, 2 threads: 16.4 -> 13.4 ms).
    if (K >= 64 && n1 - j >= 512) {
        lb_gemm_cols_at(LB_KERNELS_AVX512, y, 0, x, 0, 1, W, K, ldw, j, n1, beta0);
        return;
    }
    for (; j + 128 <= n1; j += 128) cols_block512(y, x, W, K, ldw, j, 8, 0xFFFF, beta0);
    for (; j + 64 <= n1; j += 64) cols_block512(y, x, W, K, ldw, j, 4, 0xFFFF, beta0);
    for (; j + 16 <= n1; j += 16) cols_block512(y, x, W, K, ldw, j, 1, 0xFFFF, beta0);
    if (j < n1) cols_block512(y, x, W, K, ldw, j, 1, (__mmask16)((1u << (n1 - j)) - 1), beta0);
}

INLINE T512 __m512 row_partial512(const float *w, const float *x, int C) {
    __m512 a = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= C; c += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(w + c), _mm512_loadu_ps(x + c), a);
    if (c < C) {
        __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, x + c), a);
    }
    return a;
}

// Rows of at most 8 values (LoRA's B [out, r] times u[r], r ≤ 8): four
// rows' products in four 8-lane vectors, summed by one horizontal-add tree,
// instead of a 16-lane reduction per row (4x faster at r = 8).
static T512 void gemv_rows_narrow(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0) {
    __mmask8 m = (__mmask8)((1u << C) - 1);
    __m256 xv = _mm256_maskz_loadu_ps(m, x);
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *w = W + (size_t)r * ldw;
        __m256 p0 = _mm256_mul_ps(_mm256_maskz_loadu_ps(m, w), xv);
        __m256 p1 = _mm256_mul_ps(_mm256_maskz_loadu_ps(m, w + ldw), xv);
        __m256 p2 = _mm256_mul_ps(_mm256_maskz_loadu_ps(m, w + 2 * (size_t)ldw), xv);
        __m256 p3 = _mm256_mul_ps(_mm256_maskz_loadu_ps(m, w + 3 * (size_t)ldw), xv);
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(p0, p1), _mm256_hadd_ps(p2, p3));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        if (!beta0) s = _mm_add_ps(s, _mm_loadu_ps(y + r));
        _mm_storeu_ps(y + r, s);
    }
    for (; r < r1; r++) {
        const float *w = W + (size_t)r * ldw;
        __m256 p = _mm256_mul_ps(_mm256_maskz_loadu_ps(m, w), xv);
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(p, p), _mm256_hadd_ps(p, p));
        float s = _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
        y[r] = beta0 ? s : y[r] + s;
    }
}

static T512 void gemv_rows_avx512(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0) {
    if (C <= 8) {
        gemv_rows_narrow(y, x, W, C, ldw, r0, r1, beta0);
        return;
    }
    int r = r0;
    // Four rows at a time share the loads of x.
    for (; r + 4 <= r1; r += 4) {
        const float *w = W + (size_t)r * ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 16 <= C; c += 16) {
            __m512 xv = _mm512_loadu_ps(x + c);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + c), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + ldw + c), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 2 * (size_t)ldw + c), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 3 * (size_t)ldw + c), xv, a3);
        }
        if (c < C) {
            __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
            __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + c), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + ldw + c), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + 2 * (size_t)ldw + c), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + 3 * (size_t)ldw + c), xv, a3);
        }
        float s0 = _mm512_reduce_add_ps(a0), s1 = _mm512_reduce_add_ps(a1);
        float s2 = _mm512_reduce_add_ps(a2), s3 = _mm512_reduce_add_ps(a3);
        y[r] = beta0 ? s0 : y[r] + s0;
        y[r + 1] = beta0 ? s1 : y[r + 1] + s1;
        y[r + 2] = beta0 ? s2 : y[r + 2] + s2;
        y[r + 3] = beta0 ? s3 : y[r + 3] + s3;
    }
    for (; r < r1; r++) {
        float s = _mm512_reduce_add_ps(row_partial512(W + (size_t)r * ldw, x, C));
        y[r] = beta0 ? s : y[r] + s;
    }
}

// ---- AVX2 + FMA --------------------------------------------------------

// Columns [j, j + 8·nv), the last vector holding `lastN` (1...8) columns.
INLINE T256 void cols_block256(float *y, const float *x, const float *W, int K, int ldw, int j, int nv, int lastN,
                               int beta0) {
    __m256 acc[8];
    __m256i lm = lb_mask8(lastN);
    for (int v = 0; v < nv; v++) {
        if (beta0)
            acc[v] = _mm256_setzero_ps();
        else
            acc[v] = v == nv - 1 ? _mm256_maskload_ps(y + j + 8 * v, lm) : _mm256_loadu_ps(y + j + 8 * v);
    }
    const float *p = W + j;
    for (int k = 0; k < K; k++, p += ldw) {
        __m256 xv = _mm256_set1_ps(x[k]);
        for (int v = 0; v < nv; v++) {
            __m256 w = v == nv - 1 ? _mm256_maskload_ps(p + 8 * v, lm) : _mm256_loadu_ps(p + 8 * v);
            acc[v] = _mm256_fmadd_ps(xv, w, acc[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        if (v == nv - 1)
            _mm256_maskstore_ps(y + j + 8 * v, lm, acc[v]);
        else
            _mm256_storeu_ps(y + j + 8 * v, acc[v]);
    }
}

static T256 void gemv_cols_avx2(float *y, const float *x, const float *W, int K, int ldw, int n0, int n1, int beta0) {
    // Wide products: gemm_small.c's one-row tiles (8 rows × 8 KiB),
    // the same sums in the same order. AMD EPYC Zen 2, 1 thread, GPT-2's 48
    // block products: 40 → 25 ms, a plain read of the weights' speed. Its
    // split shapes (lb_cols_split_at) at any width: their order is its own.
    if ((K >= 8 && n1 - n0 >= 512) || lb_cols_split_at(LB_KERNELS_AVX2, LB_DTYPE_F32, K, ldw)) {
        lb_gemm_cols_at(LB_KERNELS_AVX2, y, 0, x, 0, 1, W, K, ldw, n0, n1, beta0);
        return;
    }
    int j = n0;
    for (; j + 64 <= n1; j += 64) cols_block256(y, x, W, K, ldw, j, 8, 8, beta0);
    for (; j + 32 <= n1; j += 32) cols_block256(y, x, W, K, ldw, j, 4, 8, beta0);
    for (; j + 8 <= n1; j += 8) cols_block256(y, x, W, K, ldw, j, 1, 8, beta0);
    if (j < n1) cols_block256(y, x, W, K, ldw, j, 1, n1 - j, beta0);
}

// Rows of at most 8 values (LoRA's B [out, r] times u[r], r ≤ 8), 8 rows
// at a time: lb_hsum256's tree (lo + hi, then lanes 0 + 2 and 1 + 3, then
// 0 + 1) run on the 8 rows' products at once, with the same additions in
// the same order, so each output has gemv_rows_avx2's bits. AMD EPYC Zen 2:
// LoRA's B products were ~10% of a 16-sequence engine step, one hsum each.
static T256 void gemv_rows_narrow256(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1,
                                     int beta0) {
    __m256i lm = lb_mask8(C);
    __m256 xv = C == 8 ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, lm), z = _mm256_setzero_ps();
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int r = r0;
    for (; r + 8 <= r1; r += 8) {
        const float *w = W + (size_t)r * ldw;
        __m256 p[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            p[i] = _mm256_fmadd_ps(
                C == 8 ? _mm256_loadu_ps(w + (size_t)i * ldw) : _mm256_maskload_ps(w + (size_t)i * ldw, lm), xv, z);
        // u[i] = lo + hi, two rows a vector: [u0 | u1], [u2 | u3], ...
        __m256 u01 = _mm256_add_ps(_mm256_permute2f128_ps(p[0], p[1], 0x20), _mm256_permute2f128_ps(p[0], p[1], 0x31));
        __m256 u23 = _mm256_add_ps(_mm256_permute2f128_ps(p[2], p[3], 0x20), _mm256_permute2f128_ps(p[2], p[3], 0x31));
        __m256 u45 = _mm256_add_ps(_mm256_permute2f128_ps(p[4], p[5], 0x20), _mm256_permute2f128_ps(p[4], p[5], 0x31));
        __m256 u67 = _mm256_add_ps(_mm256_permute2f128_ps(p[6], p[7], 0x20), _mm256_permute2f128_ps(p[6], p[7], 0x31));
        // v = u[0..1] + u[2..3]: [v0 v2 | v1 v3], [v4 v6 | v5 v7].
        __m256 va = _mm256_add_ps(_mm256_shuffle_ps(u01, u23, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(u01, u23, _MM_SHUFFLE(3, 2, 3, 2)));
        __m256 vb = _mm256_add_ps(_mm256_shuffle_ps(u45, u67, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(u45, u67, _MM_SHUFFLE(3, 2, 3, 2)));
        // f = v[0] + v[1]: [f0 f2 f4 f6 | f1 f3 f5 f7], then in row order.
        __m256 f = _mm256_add_ps(_mm256_shuffle_ps(va, vb, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(va, vb, _MM_SHUFFLE(3, 1, 3, 1)));
        f = _mm256_permutevar8x32_ps(f, order);
        if (!beta0) f = _mm256_add_ps(_mm256_loadu_ps(y + r), f);
        _mm256_storeu_ps(y + r, f);
    }
    for (; r < r1; r++) {
        const float *w = W + (size_t)r * ldw;
        float s = lb_hsum256(_mm256_fmadd_ps(C == 8 ? _mm256_loadu_ps(w) : _mm256_maskload_ps(w, lm), xv, z));
        y[r] = beta0 ? s : y[r] + s;
    }
}

static T256 void gemv_rows_avx2(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0) {
    if (C <= 8) {
        gemv_rows_narrow256(y, x, W, C, ldw, r0, r1, beta0);
        return;
    }
    // Six rows at a time: six independent chains of fused multiply-adds
    // (two were bound by the FMA latency on rows already in cache: LoRA's A
    // [r, in], attention's keys); each row's sums as before.
    lb_rows_decode256(LB_DTYPE_F32, y, x, W, NULL, C, ldw, r0, r1, beta0);
}

#endif

int lb_gemv_available(void) {
#if defined(__x86_64__)
    return lb_kernels_level() >= LB_KERNELS_AVX2;
#else
    return 0;
#endif
}

void lb_gemv_cols(float *y, const float *x, const float *W, int K, int ldw, int n0, int n1, int beta0) {
    lb_gemv_cols_at(lb_kernels_level(), y, x, W, K, ldw, n0, n1, beta0);
}

void lb_gemv_rows(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0) {
    lb_gemv_rows_at(lb_kernels_level(), y, x, W, C, ldw, r0, r1, beta0);
}

void lb_gemv_cols_at(int level, float *y, const float *x, const float *W, int K, int ldw, int n0, int n1, int beta0) {
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512()) {
        gemv_cols_avx512(y, x, W, K, ldw, n0, n1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma()) {
        gemv_cols_avx2(y, x, W, K, ldw, n0, n1, beta0);
        return;
    }
#endif
    for (int n = n0; n < n1; n++) {
        float a = beta0 ? 0 : y[n];
        for (int k = 0; k < K; k++) a = fmaf(x[k], W[(size_t)k * ldw + n], a);
        y[n] = a;
    }
}

void lb_gemv_rows_at(int level, float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0) {
#if defined(__x86_64__)
    if (level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512()) {
        gemv_rows_avx512(y, x, W, C, ldw, r0, r1, beta0);
        return;
    }
    if (level >= LB_KERNELS_AVX2 && lb_cpu_has_avx2_fma()) {
        gemv_rows_avx2(y, x, W, C, ldw, r0, r1, beta0);
        return;
    }
#endif
    for (int r = r0; r < r1; r++) {
        float a = 0;
        for (int c = 0; c < C; c++) a = fmaf(W[(size_t)r * ldw + c], x[c], a);
        y[r] = beta0 ? a : y[r] + a;
    }
}
