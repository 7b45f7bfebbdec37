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
    // Also the AMX product's: a 384 × 512 bf16 weight block, 3 × 32 × 384
    // bf16 activations and a 16 × 16 tile (117,008 floats with alignment).
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

#if defined(__x86_64__) && defined(__linux__)
// ---- AMX (Intel's tile unit, Sapphire Rapids and later): a BF16 weight ----
// AMX multiplies bf16 by bf16 and sums in F32. The weight is bf16 already;
// each activation a is split exactly into three bf16 parts, h = bf16(a),
// m = bf16(a − h), l = bf16(a − h − m) (8 + 8 + 8 significant bits: all of
// an F32's), so w·a = w·h + w·m + w·l with every product exact in F32, and
// the sums run in F32 as the F32 packed GEMM's do, in another order: k in
// blocks of 32 (one tile), the three parts of each block one after another.
// Each element of C is still one worker's, summed over k in the same order
// whatever the split of the columns: results do not depend on the threads.
// Non-finite activations, or finite ones whose bf16 rounding overflows
// (|a| ≥ 3.39e38), make the parts NaN; the F32 product would give ±inf/NaN.
// The conversions and AMX treat subnormal inputs and results as 0: a part
// or product below 2^-126 is lost (an activation's third part only when
// |a| < 2^-110 or so; F32 keeps those as subnormals).
// Tiles: 0–3 a 32 × 32 block of C, 4 and 5 A (16 rows × 32 k of one part),
// 6 and 7 the weight (16 pairs of k × 16 columns, AMX's pair-interleaved
// layout). The weight is converted a KC × NC block at a time into that
// layout; the activations 32 rows × KC at a time into the three parts.
#define AX_KC 384 // multiple of 32
#define AX_NC 512 // multiple of 32
#define AX_MB 32  // rows of C per register block
#define TAMX  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

// The weight block op(W)[pc ..< pc + kc, jc ..< jc + nc] in tiles: for columns
// 16g … 16g + 15 and k 32b … 32b + 31, the tile at Bp + (g·KC/32 + b)·512, its
// row i holding (k = 32b + 2i, 32b + 2i + 1) of each column in turn; k past kc
// and columns past nc are 0 (to a multiple of 32 columns).
TAMX static void amx_pack_w(const uint16_t *W, int ldw, int trans, int pc, int kc, int jc, int nc, uint16_t *Bp) {
    int groups = ((nc + 31) / 32) * 2, kblocks = (kc + 31) / 32;
    for (int g = 0; g < groups; g++) {
        __mmask16 mc = mask_upto(nc - 16 * g);
        for (int b = 0; b < kblocks; b++) {
            uint16_t *tile = Bp + ((size_t)g * (AX_KC / 32) + b) * 512;
            if (!trans) {
                // W [K, N]: rows k and k + 1 interleaved, 16 columns at a time.
                for (int i = 0; i < 16; i++) {
                    int k = 32 * b + 2 * i;
                    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
                    if (mc && k < kc)
                        lo = _mm512_cvtepu16_epi32(
                            _mm256_maskz_loadu_epi16(mc, W + (size_t)(pc + k) * ldw + jc + 16 * g));
                    if (mc && k + 1 < kc)
                        hi = _mm512_cvtepu16_epi32(
                            _mm256_maskz_loadu_epi16(mc, W + (size_t)(pc + k + 1) * ldw + jc + 16 * g));
                    _mm512_store_si512((__m512i *)(tile + 32 * i), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
            } else {
                // W [N, K]: column n of op(W) is row n of W, whose pairs of k are
                // 32-bit words; the tile is the 16 × 16 transpose of those words.
                int left = kc - 32 * b;
                __mmask32 mk = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = (mc >> i) & 1 ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                               mk, W + (size_t)(jc + 16 * g + i) * ldw + pc + 32 * b))
                                         : _mm512_setzero_ps();
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_store_ps((float *)(tile + 32 * i), r[i]);
            }
        }
    }
}

// Rows 0 ..< rows of A[:, pc ..< pc + kc] as the three bf16 parts, part p's
// row r at Ap + (p·MB + r)·KC; k past kc and rows past `rows` are 0.
TAMX static void amx_pack_a(const float *A, int lda, int rows, int pc, int kc, uint16_t *Ap) {
    int kcp = (kc + 31) / 32 * 32;
    for (int r = 0; r < AX_MB; r++) {
        uint16_t *h = Ap + (size_t)r * AX_KC, *m = h + (size_t)AX_MB * AX_KC, *l = m + (size_t)AX_MB * AX_KC;
        if (r >= rows) {
            memset(h, 0, (size_t)kcp * 2), memset(m, 0, (size_t)kcp * 2), memset(l, 0, (size_t)kcp * 2);
            continue;
        }
        const float *a = A + (size_t)r * lda + pc;
        for (int k = 0; k < kcp; k += 16) {
            __m512 x = _mm512_maskz_loadu_ps(mask_upto(kc - k), a + k);
            __m256bh hb = _mm512_cvtneps_pbh(x);
            __m512 r1 = _mm512_sub_ps(x, _mm512_cvtpbh_ps(hb));
            __m256bh mb = _mm512_cvtneps_pbh(r1);
            __m256bh lb = _mm512_cvtneps_pbh(_mm512_sub_ps(r1, _mm512_cvtpbh_ps(mb)));
            _mm256_store_si256((__m256i *)(h + k), (__m256i)hb);
            _mm256_store_si256((__m256i *)(m + k), (__m256i)mb);
            _mm256_store_si256((__m256i *)(l + k), (__m256i)lb);
        }
    }
}

// Tile t of C (rows 16·(t / 2), columns 16·(t % 2) of the block at c) from
// or to memory; a partial tile goes through `tmp`.
#define AMX_C_LOAD(t)                                                                                                  \
    do {                                                                                                               \
        int r_ = rows - 16 * ((t) / 2), n_ = cols - 16 * ((t) % 2);                                                    \
        float *c_ = c + (size_t)16 * ((t) / 2) * ldc + 16 * ((t) % 2);                                                 \
        if (!accumulate || r_ <= 0 || n_ <= 0)                                                                         \
            _tile_zero(t);                                                                                             \
        else if (r_ >= 16 && n_ >= 16)                                                                                 \
            _tile_loadd(t, c_, (size_t)ldc * 4);                                                                       \
        else {                                                                                                         \
            for (int i_ = 0; i_ < 16; i_++)                                                                            \
                _mm512_store_ps(tmp + 16 * i_, i_ < r_ ? _mm512_maskz_loadu_ps(mask_upto(n_), c_ + (size_t)i_ * ldc)   \
                                                       : _mm512_setzero_ps());                                         \
            _tile_loadd(t, tmp, 64);                                                                                   \
        }                                                                                                              \
    } while (0)
#define AMX_C_STORE(t)                                                                                                 \
    do {                                                                                                               \
        int r_ = rows - 16 * ((t) / 2), n_ = cols - 16 * ((t) % 2);                                                    \
        float *c_ = c + (size_t)16 * ((t) / 2) * ldc + 16 * ((t) % 2);                                                 \
        if (r_ >= 16 && n_ >= 16)                                                                                      \
            _tile_stored(t, c_, (size_t)ldc * 4);                                                                      \
        else if (r_ > 0 && n_ > 0) {                                                                                   \
            _tile_stored(t, tmp, 64);                                                                                  \
            for (int i_ = 0; i_ < r_ && i_ < 16; i_++)                                                                 \
                _mm512_mask_storeu_ps(c_ + (size_t)i_ * ldc, mask_upto(n_), _mm512_load_ps(tmp + 16 * i_));            \
        }                                                                                                              \
    } while (0)

TAMX static void gemm_amx_bf16(const uint16_t *W, int ldw, int trans, int M, int K, const float *A, int lda, float *C,
                               int ldc, int n0, int n1, int beta0, void *scratch) {
    uint16_t *Bp = (uint16_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint16_t *Ap = Bp + (size_t)AX_KC * AX_NC;
    float *tmp = (float *)(Ap + (size_t)3 * AX_MB * AX_KC);
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
    _tile_loadconfig(&cfg);
    const size_t part = (size_t)AX_MB * AX_KC, astride = (size_t)AX_KC * 2;
    for (int pc = 0; pc < K; pc += AX_KC) {
        int kc = K - pc < AX_KC ? K - pc : AX_KC, kblocks = (kc + 31) / 32;
        int accumulate = !(pc == 0 && beta0);
        for (int jc = n0; jc < n1; jc += AX_NC) {
            int nc = n1 - jc < AX_NC ? n1 - jc : AX_NC;
            amx_pack_w(W, ldw, trans, pc, kc, jc, nc, Bp);
            for (int mb = 0; mb < M; mb += AX_MB) {
                int rows = M - mb < AX_MB ? M - mb : AX_MB;
                amx_pack_a(A + (size_t)mb * lda, lda, rows, pc, kc, Ap);
                for (int j = 0; j < nc; j += 32) {
                    int cols = nc - j;
                    float *c = C + (size_t)mb * ldc + jc + j;
                    AMX_C_LOAD(0);
                    AMX_C_LOAD(1);
                    AMX_C_LOAD(2);
                    AMX_C_LOAD(3);
                    const uint16_t *b0 = Bp + (size_t)(j / 16) * (AX_KC / 32) * 512;
                    const uint16_t *b1 = b0 + (size_t)(AX_KC / 32) * 512;
                    for (int b = 0; b < kblocks; b++) {
                        _tile_loadd(6, b0 + (size_t)b * 512, 64);
                        _tile_loadd(7, b1 + (size_t)b * 512, 64);
                        for (int p = 0; p < 3; p++) {
                            const uint16_t *a = Ap + p * part + 32 * b;
                            _tile_loadd(4, a, astride);
                            _tile_loadd(5, a + 16 * AX_KC, astride);
                            _tile_dpbf16ps(0, 4, 6);
                            _tile_dpbf16ps(1, 4, 7);
                            _tile_dpbf16ps(2, 5, 6);
                            _tile_dpbf16ps(3, 5, 7);
                        }
                    }
                    AMX_C_STORE(0);
                    AMX_C_STORE(1);
                    AMX_C_STORE(2);
                    AMX_C_STORE(3);
                }
            }
        }
    }
    _tile_release();
}

#include <cpuid.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int amx_usable;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

// AMX-TILE and AMX-BF16 (CPUID 7.0 EDX bits 24 and 22), AVX512-BF16 for the
// splits, the OS saving the tile state (XCR0 bits 17, 18) and Linux letting
// this process use it (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
// LORA_AMX=0 in the environment keeps AMX off (the packed GEMM instead).
static void amx_probe(void) {
    const char *env = getenv("LORA_AMX");
    if (env && strcmp(env, "0") == 0) return;
    unsigned a, b, c, d;
    if (!lb_cpu_has_avx512() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!((d >> 24) & 1) || !((d >> 22) & 1)) return;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1)) return; // AVX512-BF16
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return;         // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) return;
    amx_usable = 1;
}
#endif

int lb_gemm_amx_available(void) {
#if defined(__x86_64__) && defined(__linux__)
    pthread_once(&amx_once, amx_probe);
    return amx_usable;
#else
    return 0;
#endif
}

void lb_gemm_amx_bf16(int trans, int M, int K, const float *A, int lda, const uint16_t *W, int ldw, float *C, int ldc,
                      int n0, int n1, int beta0, float *scratch) {
#if defined(__x86_64__) && defined(__linux__)
    if (M > 0 && n1 > n0 && K > 0 && lb_gemm_amx_available()) {
        gemm_amx_bf16(W, ldw, trans, M, K, A, lda, C, ldc, n0, n1, beta0, scratch);
        return;
    }
#endif
    // Without AMX: the packed GEMM (which needs AVX-512, as its callers check).
    lb_gemm_packed_lowp(LB_DTYPE_BF16, 0, trans, M, K, A, lda, W, NULL, ldw, C, ldc, n0, n1, beta0, scratch);
}

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
