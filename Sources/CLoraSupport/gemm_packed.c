// Products of many rows with a BF16, F16 or Q8_0 frozen weight: liblora's
// own packed GEMM, which converts the weight to F32 while it packs it.
//
// C[M, n0..<n1] (+)= A[M, K] · op(W), op(W) = W [K, N] (a Conv1D weight) or
// Wᵀ with W [N, K] (the tied LM head's forward, Conv1D's dX = dY·Wᵀ).
// The blocking is Goto's / BLIS's, with the roles set for row-major data:
// - A (activations, F32) is read in place, a panel of MR rows and KC
//   columns at a time (each row a stream of broadcasts); only a last
//   partial panel is copied, padded with zero rows. Copying every panel (as
//   OpenBLAS packs it) cost each worker a pass over all of A per KC block:
//   LoRA training on a bf16 base ran at 483 tok/s with it, 498 without
//   (medians of 5 alternating runs, F32 498);
// - op(W) is converted KC × NC at a time into micro-panels of KC × NR
//   floats (NR = 32 columns, two vectors per k), L2-resident; for Wᵀ the
//   conversion transposes 16 × 16 blocks in registers;
// - the micro-kernel keeps an MR × NR tile of C in 24 registers and does
//   MR × 2 fused multiply-adds per k (one broadcast of A per row).
// Each element of C is the sum over k in order, a block of KC at a time
// (the tile is stored and reloaded between blocks), whatever the split of
// the columns across workers: results do not depend on the thread count.
// Against converting F32 panels for OpenBLAS (0.97× F32 in training): the
// weight is read once from memory and written once to L2, and the
// activations are not packed at all; training on a bf16 base now runs at
// 1.01× F32, on a q8_0 base 1.02× (Intel Emerald Rapids). A Q8_0 weight is
// dequantized (q · F16 scale, exact) as it is packed.
#include "lora_support.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

// KC 256, 512 or 768 and NC 256 or 1024 were no faster (C microbenchmark).
#define PK_MR 12
#define PK_NR 32
#define PK_KC 384
#define PK_NC 512

size_t lb_gemm_packed_scratch_floats(void) {
    return (size_t)PK_MR * PK_KC + (size_t)PK_KC * PK_NC + 16;
}

#if defined(__x86_64__)
#define T512   __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline

// The stored weight: a [R, ldw] matrix of `dtype`; for Q8_0 its scales d,
// [ceil(R/32), ldw] in the cols layout (a Conv1D weight, blocks down each
// column), else [R, ncb = ceil(ldw/32)] (wte: blocks along each row).
typedef struct {
    int dtype, cols_layout, ldw, ncb;
    const void *W;
    const uint16_t *d;
} stored_w;

// 16 weights (r, c … c + 15) as F32, exactly; only the lanes of `m` are read
// (the rest are 0). c is a multiple of 16, so a run never straddles a Q8_0 block.
T512 INLINE __m512 load16(const stored_w *w, int r, int c, __mmask16 m) {
    size_t i = (size_t)r * w->ldw + c;
    if (w->dtype == LB_DTYPE_Q8_0) {
        __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)w->W + i)));
        __m512 s = w->cols_layout ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w->d + (size_t)(r / 32) * w->ldw + c))
                                  : _mm512_set1_ps(_cvtsh_ss(w->d[(size_t)r * w->ncb + c / 32]));
        return _mm512_mul_ps(q, s);
    }
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w->W + i);
    if (w->dtype == LB_DTYPE_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

T512 INLINE __mmask16 mask_upto(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

// The 16 × 16 transpose of r (rows) into r (columns).
T512 INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Per 128-bit lane L, u[4i + j] holds column j + 4L of rows 4i … 4i + 3.
    __m512 u[16];
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        __m512 x0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), x1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        __m512 y0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88),
               y1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_f32x4(x0, y0, 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
        r[j + 4] = _mm512_shuffle_f32x4(x1, y1, 0x88);
        r[j + 12] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
    }
}

// op(W)[pc ..< pc + kc, jc ..< jc + nc] as F32 micro-panels: column j of the
// block at Bp[(j / NR)·KC·NR + k·NR + j % NR]; columns past nc are 0.
T512 static void pack_w(const stored_w *w, int trans, int pc, int kc, int jc, int nc, float *Bp) {
    for (int j = 0; j < nc; j += PK_NR) {
        float *dst = Bp + (size_t)(j / PK_NR) * PK_KC * PK_NR;
        if (!trans) {
            // Row k of the block is contiguous in W [K, N].
            __mmask16 m0 = mask_upto(nc - j), m1 = mask_upto(nc - j - 16);
            size_t bytes = w->dtype == LB_DTYPE_Q8_0 ? 1 : 2;
            for (int k = 0; k < kc; k++) {
                if (k + 8 < kc)
                    _mm_prefetch((const char *)w->W + ((size_t)(pc + k + 8) * w->ldw + jc + j) * bytes, _MM_HINT_T0);
                _mm512_store_ps(dst + k * PK_NR, load16(w, pc + k, jc + j, m0));
                _mm512_store_ps(dst + k * PK_NR + 16, load16(w, pc + k, jc + j + 16, m1));
            }
        } else {
            // Column j of op(W) is row jc + j of W [N, K]: 16 rows × 16 k, transposed.
            for (int h = 0; h < 2; h++) {
                int rows = nc - j - 16 * h; // rows of W in this half
                for (int k = 0; k < kc; k += 16) {
                    __mmask16 mk = mask_upto(kc - k);
                    __m512 r[16];
                    for (int i = 0; i < 16; i++)
                        r[i] = i < rows ? load16(w, jc + j + 16 * h + i, pc + k, mk) : _mm512_setzero_ps();
                    transpose16(r);
                    int kk = kc - k < 16 ? kc - k : 16;
                    for (int i = 0; i < kk; i++) _mm512_store_ps(dst + (k + i) * PK_NR + 16 * h, r[i]);
                }
            }
        }
    }
}

// C[0 ..< mr, 0 ..< NR (masked)] (+)= a (MR rows, row stride lda) · Bp (kc × NR).
T512 static void kernel(int kc, const float *restrict a, size_t lda, const float *restrict Bp, float *C, int ldc,
                        int accumulate, int mr, __mmask16 m0, __mmask16 m1) {
    __m512 c0[PK_MR], c1[PK_MR];
    for (int r = 0; r < PK_MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(Bp + k * PK_NR), b1 = _mm512_load_ps(Bp + k * PK_NR + 16);
        _mm_prefetch((const char *)(Bp + (k + 8) * PK_NR), _MM_HINT_T0);
#pragma GCC unroll 12
        for (int r = 0; r < PK_MR; r++) {
            __m512 x = _mm512_set1_ps(a[r * lda + k]);
            c0[r] = _mm512_fmadd_ps(x, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(x, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *c = C + (size_t)r * ldc;
        if (accumulate) {
            c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, c));
            c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, c + 16));
        }
        _mm512_mask_storeu_ps(c, m0, c0[r]);
        _mm512_mask_storeu_ps(c + 16, m1, c1[r]);
    }
}

T512 static void gemm_packed_avx512(const stored_w *w, int trans, int M, int K, const float *A, int lda, float *C,
                                    int ldc, int n0, int n1, int beta0, float *scratch) {
    int panels = (M + PK_MR - 1) / PK_MR, full = M / PK_MR;
    float *Ap = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63); // the last, partial panel
    float *Bp = Ap + (size_t)PK_MR * PK_KC;
    for (int pc = 0; pc < K; pc += PK_KC) {
        int kc = K - pc < PK_KC ? K - pc : PK_KC;
        if (full < panels)
            for (int i = 0; i < PK_MR; i++) {
                float *dst = Ap + (size_t)i * PK_KC;
                if (full * PK_MR + i < M)
                    memcpy(dst, A + (size_t)(full * PK_MR + i) * lda + pc, (size_t)kc * sizeof(float));
                else
                    memset(dst, 0, (size_t)kc * sizeof(float));
            }
        int accumulate = !(pc == 0 && beta0);
        for (int jc = n0; jc < n1; jc += PK_NC) {
            int nc = n1 - jc < PK_NC ? n1 - jc : PK_NC;
            pack_w(w, trans, pc, kc, jc, nc, Bp);
            for (int p = 0; p < panels; p++) {
                int mr = p < full ? PK_MR : M - p * PK_MR;
                const float *a = p < full ? A + (size_t)p * PK_MR * lda + pc : Ap;
                size_t stride = p < full ? (size_t)lda : PK_KC;
                for (int j = 0; j < nc; j += PK_NR)
                    kernel(kc, a, stride, Bp + (size_t)(j / PK_NR) * PK_KC * PK_NR,
                           C + (size_t)p * PK_MR * ldc + jc + j, ldc, accumulate, mr, mask_upto(nc - j),
                           mask_upto(nc - j - 16));
            }
        }
    }
}
#endif

int lb_gemm_packed_available(int level, int dtype) {
#if defined(__x86_64__)
    return level >= LB_KERNELS_AVX512 && lb_cpu_has_avx512() &&
           (dtype == LB_DTYPE_BF16 || dtype == LB_DTYPE_F16 || dtype == LB_DTYPE_Q8_0);
#else
    (void)level, (void)dtype;
    return 0;
#endif
}

void lb_gemm_packed_lowp(int dtype, int cols_layout, int trans, int M, int K, const float *A, int lda, const void *W,
                         const uint16_t *d, int ldw, float *C, int ldc, int n0, int n1, int beta0, float *scratch) {
#if defined(__x86_64__)
    if (M <= 0 || n1 <= n0) return;
    if (K <= 0) {
        if (beta0)
            for (int m = 0; m < M; m++) memset(C + (size_t)m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
        return;
    }
    stored_w w = {dtype, cols_layout, ldw, (ldw + 31) / 32, W, d};
    gemm_packed_avx512(&w, trans, M, K, A, lda, C, ldc, n0, n1, beta0, scratch);
#else
    (void)dtype, (void)cols_layout, (void)trans, (void)M, (void)K, (void)A, (void)lda, (void)W, (void)d, (void)ldw,
        (void)C, (void)ldc, (void)n0, (void)n1, (void)beta0, (void)scratch;
#endif
}
