// Internal C support for the Swift core: run-time loading of OpenBLAS and
// LAPACKE, CPU feature checks. Nothing here is public API (hidden symbols).
#ifndef LORA_SUPPORT_H
#define LORA_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LB_HIDDEN __attribute__((visibility("hidden")))

// Loads OpenBLAS and LAPACKE once per process (thread-safe). Returns 0 on
// success; otherwise 1 and lb_load_error() says why. Before loading, when
// OPENBLAS_CORETYPE is unset and the OpenBLAS build reports a kernel set
// older than the CPU supports, the library is reloaded with the matching
// OPENBLAS_CORETYPE (the variable is removed again afterwards). A value the
// user set is never overridden.
LB_HIDDEN int lb_load(void);
LB_HIDDEN const char *lb_load_error(void);
// The kernel set OpenBLAS runs ("SkylakeX", "Haswell", ...).
LB_HIDDEN const char *lb_corename(void);
// The kernel set OpenBLAS picked on its own before liblora intervened.
LB_HIDDEN const char *lb_corename_initial(void);
// 1 when liblora chose the core (set OPENBLAS_CORETYPE), 0 otherwise.
LB_HIDDEN int lb_core_was_chosen(void);
// "oneDNN" when it runs the matrix products (libdnnl.so.2 loaded, LORA_SGEMM is not "openblas"), else "OpenBLAS".
LB_HIDDEN const char *lb_sgemm_library(void);
// 1 when oneDNN runs the matrix products (the same rule; opens it the first time).
LB_HIDDEN int lb_sgemm_is_onednn(void);
LB_HIDDEN const char *lb_openblas_config(void);
// Worker threads of liblora's kernels, for the whole process. Set at load
// from OpenBLAS's own choice (OPENBLAS_NUM_THREADS or the CPU count); OpenBLAS
// is then switched to one thread: liblora splits products itself.
#define LB_MAX_THREADS 256
LB_HIDDEN int lb_get_num_threads(void);
LB_HIDDEN void lb_set_num_threads(int n);
// The worker count a kernel may use now: 1 inside a parallel region (no
// nesting), lb_get_num_threads() otherwise. Does not load OpenBLAS.
LB_HIDDEN int lb_compute_threads(void);
// The process-wide worker count as set (without loading OpenBLAS, whatever
// the calling thread's parallel region).
LB_HIDDEN int lb_thread_setting(void);
// Marks the calling thread as running inside a parallel region; returns the
// previous mark for lb_leave_parallel.
LB_HIDDEN int lb_enter_parallel(void);
LB_HIDDEN void lb_leave_parallel(int was);
// Runs fn(ctx, c) for every c in 0..<chunks on liblora's worker threads and
// the calling thread (pool.c), returning when all are done. Inside a
// parallel region, or while another thread's job runs, the caller runs every
// chunk itself. fn must not throw or longjmp.
typedef void (*lb_chunk_fn)(void *ctx, int chunk);
LB_HIDDEN void lb_parallel_run(int chunks, lb_chunk_fn fn, void *ctx);
// The lock of the C ABI's handle table; a fork() child starts with it unlocked.
LB_HIDDEN void lb_handles_lock(void);
LB_HIDDEN void lb_handles_unlock(void);

// Pure decision function (testable): the OPENBLAS_CORETYPE liblora would
// set for a CPU with these features when OpenBLAS reports `reported`, or
// NULL to keep what OpenBLAS chose.
LB_HIDDEN const char *lb_preferred_core(const char *reported, int has_avx512, int has_avx2_fma);
LB_HIDDEN int lb_cpu_has_avx512(void);
LB_HIDDEN int lb_cpu_has_avx2_fma(void);

// cblas (row-major only: order is fixed by the wrappers).
// C[m,n] = alpha * op(A) * op(B) + beta * C, lda/ldb/ldc row strides.
LB_HIDDEN void lb_sgemm(int transA, int transB, int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc);
// y[m or n] = alpha * op(A) * x + beta * y, A is [m, n] row-major.
LB_HIDDEN void lb_sgemv(int transA, int m, int n, float alpha, const float *a, int lda, const float *x, float beta,
                        float *y);

// Matrix–vector products for decode (gemv.c), AVX-512 or AVX2+FMA code
// picked for the CPU (1 from lb_gemv_available), a plain loop otherwise.
// beta0: 1 writes y, 0 adds to it. Each output's sum runs in the same order
// whatever [n0, n1) or [r0, r1) a call covers.
LB_HIDDEN int lb_gemv_available(void);
// y[n] (+)= Σ_k x[k]·W[k·ldw + n] for n in [n0, n1)   (W is [K, ≥n1]).
LB_HIDDEN void lb_gemv_cols(float *y, const float *x, const float *W, int K, int ldw, int n0, int n1, int beta0);
// y[r] (+)= Σ_c W[r·ldw + c]·x[c] for r in [r0, r1)   (W is [≥r1, C]).
LB_HIDDEN void lb_gemv_rows(float *y, const float *x, const float *W, int C, int ldw, int r0, int r1, int beta0);
// The same at one instruction-set level (LB_KERNELS_*; a level above the
// CPU's falls back to the next it has). Tests compare the levels.
LB_HIDDEN void lb_gemv_cols_at(int level, float *y, const float *x, const float *W, int K, int ldw, int n0, int n1,
                               int beta0);
LB_HIDDEN void lb_gemv_rows_at(int level, float *y, const float *x, const float *W, int C, int ldw, int r0, int r1,
                               int beta0);
// The columns form's split (AVX2 level only, gemm_small.c): for a product of
// K rows of W with row length ldw in `dtype`, kh > 0 when each output is the
// sum of two parts, rows [0, kh) and [kh, K), each summed in its own order,
// added at the end; 0 when outputs are k-order sums.
LB_HIDDEN int lb_cols_split_at(int level, int dtype, int K, int ldw);
// One part of such a product (lb_cols_split_at > 0; W as lb_gemv_cols_lowp's,
// F32/BF16/F16), columns [n0, n1): part 0 into y (from y, or zero with
// beta0), part 1 into y from zero. y = part 0 + part 1 is lb_gemv_cols_at's
// or lb_gemv_cols_lowp's result, bit for bit: workers can take one part each.
LB_HIDDEN void lb_gemv_cols_part(int level, int dtype, float *y, const float *x, const void *W, int K, int ldw,
                                 int part, int n0, int n1, int beta0);

// Products with few rows of x (gemm_small.c, same kernels and levels): row m
// of y equals lb_gemv_cols / lb_gemv_rows on row m of x, bit for bit.
// y[m·ldy + n] (+)= Σ_k x[m·ldx + k]·W[k·ldw + n], m < M, n in [n0, n1).
LB_HIDDEN void lb_gemm_cols(float *y, int ldy, const float *x, int ldx, int M, const float *W, int K, int ldw, int n0,
                            int n1, int beta0);
// y[m·ldy + r] (+)= Σ_c W[r·ldw + c]·x[m·ldx + c], m < M, r in [r0, r1).
LB_HIDDEN void lb_gemm_rows(float *y, int ldy, const float *x, int ldx, int M, const float *W, int C, int ldw, int r0,
                            int r1, int beta0);
LB_HIDDEN void lb_gemm_cols_at(int level, float *y, int ldy, const float *x, int ldx, int M, const float *W, int K,
                               int ldw, int n0, int n1, int beta0);
LB_HIDDEN void lb_gemm_rows_at(int level, float *y, int ldy, const float *x, int ldx, int M, const float *W, int C,
                               int ldw, int r0, int r1, int beta0);

// A tile walk over columns [n0, n1) of a K-row weight: strips of `cols`
// columns from n0, each in tiles of `rows` rows top to bottom. The tile
// `ahead` tiles after the one at (jt, k0), which a kernel prefetches: its
// columns [*c0, *c1) and rows [*r0, *r0 + *nrows); 0 when the walk ends
// first.
typedef struct {
    int c0, c1, r0, nrows;
} lb_tile;
static inline int lb_tile_ahead(int n0, int n1, int K, int rows, int cols, int jt, int k0, int ahead, lb_tile *t) {
    int down = (K + rows - 1) / rows;
    int i = (jt - n0) / cols * down + k0 / rows + ahead;
    t->c0 = n0 + i / down * cols;
    t->c1 = n1 - t->c0 < cols ? n1 : t->c0 + cols;
    t->r0 = i % down * rows;
    t->nrows = K - t->r0 < rows ? K - t->r0 : rows;
    return t->c0 < n1;
}

// Reduced-precision frozen weights (lowp.c): storage types, conversions,
// ggml's Q8_0 quantizer, and matrix–vector kernels that give the F32
// kernels' results on the dequantized weights bit for bit (same level).
#define LB_DTYPE_F32  0
#define LB_DTYPE_BF16 1
#define LB_DTYPE_F16  2
#define LB_DTYPE_Q8_0 3
LB_HIDDEN uint16_t lb_f32_to_bf16(float f); // round to nearest even; NaN stays NaN
LB_HIDDEN float lb_bf16_to_f32(uint16_t h);
// dst[i] = lb_f32_to_bf16(src[i]) for i < n (the KV cache's stores).
LB_HIDDEN void lb_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);
LB_HIDDEN uint16_t lb_f32_to_f16(float f); // round to nearest even; overflow → inf
LB_HIDDEN float lb_f16_to_f32(uint16_t h);
// Q8_0 of a Conv1D weight w[K, N] (blocks of 32 along K): q[K, N], d[ceil(K/32), N].
// Of a [R, C] matrix used as rows·x (blocks along C): q[R, C], d[R, ceil(C/32)].
// Return -1 when w holds a NaN or infinity or a block's scale overflows F16
// (max|w| > 65504·127; the output is then meaningless but defined), else 0.
// The scales' row stride is N (cols) or ceil(C/32) (rows): the GEMV kernels
// take ldw == N (cols) and ldw == C (rows) for quantized weights.
LB_HIDDEN int lb_quantize_q8_0_cols(int8_t *q, uint16_t *d, const float *w, int K, int N);
LB_HIDDEN int lb_quantize_q8_0_rows(int8_t *q, uint16_t *d, const float *w, int R, int C);
// F32 copies: dst[k·ldd + n − n0] for a cols-layout matrix, dst[(r − r0)·ldd + c] for rows.
LB_HIDDEN void lb_dequant_cols(int dtype, float *dst, int ldd, const void *W, const uint16_t *d, int K, int ldw, int n0,
                               int n1);
LB_HIDDEN void lb_dequant_rows(int dtype, float *dst, int ldd, const void *W, const uint16_t *d, int C, int ldw, int r0,
                               int r1);
// lb_gemv_cols_at / lb_gemv_rows_at for weights stored as dtype (d: Q8_0 scales, else unused).
// AVX-512 or AVX2+FMA+F16C code where the CPU has it (the F32 kernel's bits at that level on the
// dequantized weights; Q8_0's columns form keeps k order where AVX2 splits F32's,
// lb_cols_split_at), a plain loop otherwise (slower, the F32 plain loop's bits).
LB_HIDDEN void lb_gemv_cols_lowp(int level, int dtype, float *y, const float *x, const void *W, const uint16_t *d,
                                 int K, int ldw, int n0, int n1, int beta0);
LB_HIDDEN void lb_gemv_rows_lowp(int level, int dtype, float *y, const float *x, const void *W, const uint16_t *d,
                                 int C, int ldw, int r0, int r1, int beta0);
// F32 copy of rows [r0, r1) × columns [c0, c1) of a [R, C] matrix stored as dtype:
// dst[(r − r0)·ldd + c − c0]. cols_layout: Q8_0 scales [ceil(R/32), C] (a Conv1D
// weight), else [R, ceil(C/32)] (embeddings, LM head). Exact (as lb_dequant_*).
LB_HIDDEN void lb_dequant_panel(int dtype, int cols_layout, float *dst, int ldd, const void *W, const uint16_t *d,
                                int C, int r0, int r1, int c0, int c1);
// The same at a given kernel level (tests compare every level).
LB_HIDDEN void lb_dequant_panel_at(int level, int dtype, int cols_layout, float *dst, int ldd, const void *W,
                                   const uint16_t *d, int C, int r0, int r1, int c0, int c1);
// lb_gemm_cols_at / lb_gemm_rows_at on a weight stored as dtype (cols_layout
// as lb_dequant_panel's; the cols product's W is [K, ldw], the rows' [R, C]): the
// same bits as those on the dequantized weight, converted a tile at a time
// (rows: into `tile`, at least C floats; up to LB_ROWS_TILE_FLOATS are used).
#define LB_ROWS_TILE_FLOATS 6144
// Whether those products convert the weight in the kernels' registers
// instead (any CPU with AVX-512 or AVX2: BF16, F16, and Q8_0 in the layout
// of its product up to 32 rows; with AVX2 also decode's column products),
// and whether decode's wide BF16/F16 products and its Q8_0 rows (the LM
// head) run on the AVX-512 ones (AMD CPUs only): the same bits either way.
// lb_set_lowp_in_registers(0 or 1) overrides both choices, -1 restores them.
LB_HIDDEN int lb_lowp_in_registers(void);
LB_HIDDEN int lb_lowp_wide_decode(void);
LB_HIDDEN void lb_set_lowp_in_registers(int v);
LB_HIDDEN void lb_gemm_cols_lowp_at(int level, int dtype, int cols_layout, float *y, int ldy, const float *x, int ldx,
                                    int M, const void *W, const uint16_t *d, int K, int ldw, int n0, int n1, int beta0);
LB_HIDDEN void lb_gemm_rows_lowp_at(int level, int dtype, int cols_layout, float *y, int ldy, const float *x, int ldx,
                                    int M, const void *W, const uint16_t *d, int C, int r0, int r1, int beta0,
                                    float *tile, size_t tileFloats);
// Products of many rows with a BF16/F16/Q8_0 weight (gemm_packed.c, AVX-512):
// C[M, n0..<n1] (+)= A[M, K] · op(W), op(W) = W [K, ldw] (trans 0) or Wᵀ
// with W [N, ldw = K] (trans 1); beta0 overwrites C, else adds; Q8_0 scales
// d in the layout cols_layout says (as lb_dequant_panel's). The weight is
// converted to F32 exactly while packed; scratch holds
// lb_gemm_packed_scratch_floats() floats. Sums run over k in order, in
// blocks, the same for every column split (thread-count independent).
// lb_gemm_packed_available says whether it runs at `level` for `dtype`.
LB_HIDDEN int lb_gemm_packed_available(int level, int dtype);
LB_HIDDEN size_t lb_gemm_packed_scratch_floats(void);
LB_HIDDEN void lb_gemm_packed_lowp(int dtype, int cols_layout, int trans, int M, int K, const float *A, int lda,
                                   const void *W, const uint16_t *d, int ldw, float *C, int ldc, int n0, int n1,
                                   int beta0, float *scratch);
// The same product for a BF16 weight on AMX (gemm_packed.c): each activation
// split exactly into three bf16 parts, every product exact, sums in F32 (in
// another order than lb_gemm_packed_lowp's; results still do not depend on
// the split of the columns). W [K, ldw] (trans 0) or [N, ldw] (trans 1);
// scratch as lb_gemm_packed_lowp's. lb_gemm_amx_available says whether the
// CPU has AMX-BF16 and Linux lets this process use it (asked once).
LB_HIDDEN int lb_gemm_amx_available(void);
LB_HIDDEN void lb_gemm_amx_bf16(int trans, int M, int K, const float *A, int lda, const uint16_t *W, int ldw, float *C,
                                int ldc, int n0, int n1, int beta0, float *scratch);
// Attention's matrix products (attention.c), AVX-512 or AVX2 (the same bits
// on both): lb_attn_available() says whether the CPU runs them (without
// them, lb_attn_gemm and lb_attn_transpose do nothing). y[m·ldy + n] = alpha · (y0 + Σ_k x[m·sxm +
// k·sxk] · W[k·ldw + n]) for m < M, n < N, k < K (K > 0), y0 = 0 when beta0,
// else y (then alpha must be 1). Each sum is one fused multiply-add per k in
// k order. `causal` skips a causal mask's work, row m of the scores sitting
// at position diag + m:
// - LB_ATTN_CAUSAL_COLS: row m needs only columns n ≤ diag + m (the scores);
//   the rest of its row is left undefined.
// - LB_ATTN_CAUSAL_K_UPTO: x(m, k) is 0 for k > diag + m (weights · V).
// - LB_ATTN_CAUSAL_K_FROM: x(m, k) is 0 for k < m − diag (weightsᵀ · dO).
#define LB_ATTN_CAUSAL_NONE   0
#define LB_ATTN_CAUSAL_COLS   1
#define LB_ATTN_CAUSAL_K_UPTO 2
#define LB_ATTN_CAUSAL_K_FROM 3
LB_HIDDEN int lb_attn_available(void);
LB_HIDDEN void lb_attn_gemm(float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M, const float *W,
                            int ldw, int K, int N, int beta0, float alpha, int causal, ptrdiff_t diag);
// The same at a given LB_KERNELS_* level (tests: AVX2 against AVX-512);
// lb_attn_available_at says whether the CPU runs that level's form.
LB_HIDDEN int lb_attn_available_at(int level);
LB_HIDDEN void lb_attn_gemm_at(int level, float *y, int ldy, const float *x, ptrdiff_t sxm, ptrdiff_t sxk, int M,
                               const float *W, int ldw, int K, int N, int beta0, float alpha, int causal,
                               ptrdiff_t diag);
// dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols (AVX-512 or AVX2).
LB_HIDDEN void lb_attn_transpose(float *dst, int ldd, const float *src, int lds, int rows, int cols);
// A scratch area of at least `count` floats owned by the calling thread,
// reused by its next call (grown when too small; freed when the thread
// ends). NULL when out of memory. For the panels of the reduced-precision
// matrix products: no allocation per product.
LB_HIDDEN float *lb_thread_scratch(size_t count);
// The same for another user on the same thread: slot 0 is lb_thread_scratch's,
// slot 1 the AVX2 columns form's second parts (gemm_small.c).
#define LB_SCRATCH_SLOTS 2
LB_HIDDEN float *lb_thread_scratch_slot(int slot, size_t count);

// Returns the heap's free pages to the system (glibc's malloc_trim; nothing
// elsewhere): after a load that freed many small blocks (heap.c).
LB_HIDDEN void lb_release_free_heap(void);

// Element-wise kernels (kernels.c), dispatched to AVX-512 / AVX2 / baseline
// code for the CPU at the first call.
#define LB_KERNELS_BASELINE 1
#define LB_KERNELS_AVX2     3
#define LB_KERNELS_AVX512   4
// The instruction set the kernels use: the CPU's best (LB_KERNELS_*).
LB_HIDDEN int lb_kernels_level(void);
// out[n] = x·sigmoid(2·√(2/π)·(x + 0.044715x³))  (gelu_new); out may alias inp.
LB_HIDDEN void lb_gelu_tanh_forward(float *out, const float *inp, size_t n);
// d[n] *= gelu_new′(pre[n]).
LB_HIDDEN void lb_gelu_tanh_backward(float *d, const float *pre, size_t n);
// Softmax of row[0..<n] in place; returns log Σ exp(row) (the row's
// log-sum-exp), or -inf (and zeros) when every entry is -inf.
LB_HIDDEN float lb_softmax_lse(float *row, int n);
// row[i] = exp(row[i] − c) (-inf entries give 0).
LB_HIDDEN void lb_exp_shift(float *row, int n, float c);
// Softmax backward of one row: dp[i] = scale · p[i] · (dp[i] − Σ_j p[j]·dp[j]).
LB_HIDDEN void lb_softmax_backward(float *dp, const float *p, int n, float scale);
// Cross-entropy of one row of logits against `target` (in 0..<V): returns
// the loss in nats and replaces the row by grad_scale·(softmax − onehot).
LB_HIDDEN double lb_cross_entropy_row(float *row, int V, int target, float grad_scale);
// LayerNorm of rows of C (biased variance); mean/rstd[rows] may be NULL.
LB_HIDDEN void lb_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                    const float *bias, size_t rows, int C, float eps);
// dinp[rows, C] += ∂L/∂x of LayerNorm given dout, the input and its saved mean/rstd.
LB_HIDDEN void lb_layernorm_backward_input(float *dinp, const float *dout, const float *inp, const float *weight,
                                           const float *mean, const float *rstd, size_t rows, int C);
// out[n] = a[n] + b[n]; out may alias a or b.
LB_HIDDEN void lb_add(float *out, const float *a, const float *b, size_t n);
// Activation functions, one value per formula (the Swift `Activation` maps
// transformers' names onto them).
#define LB_ACT_GELU_TANH  0 // x·sigmoid(2·√(2/π)·(x + 0.044715x³)): gelu_new, gelu_pytorch_tanh, gelu_fast
#define LB_ACT_GELU_ERF   1 // 0.5·x·(1 + erf(x/√2)): gelu, gelu_python
#define LB_ACT_QUICK_GELU 2 // x·sigmoid(1.702x)
#define LB_ACT_RELU       3
#define LB_ACT_SILU       4 // x·sigmoid(x): silu, swish
#define LB_ACT_TANH       5
#define LB_ACT_SIGMOID    6
#define LB_ACT_LINEAR     7
// out[n] = act(inp[n]); out may alias inp.
LB_HIDDEN void lb_activation_forward(int act, float *out, const float *inp, size_t n);
// d[n] *= act′(pre[n]).
LB_HIDDEN void lb_activation_backward(int act, float *d, const float *pre, size_t n);
// Inverted dropout with counter-based masks (Kernels/Dropout.swift):
// out[i] = 0 when (h >> 40) < threshold, else x[i]·keep, where
// h = SplitMix64's output function of key + (first + i)·0x9E3779B97F4A7C15.
// out may alias x.
LB_HIDDEN void lb_dropout(float *out, const float *x, size_t n, uint64_t key, uint64_t first, uint64_t threshold,
                          float keep);

// One instruction set's versions of the kernels above (tests compare them).
typedef struct lb_kernel_set {
    void (*gelu_tanh_forward)(float *out, const float *inp, size_t n);
    void (*gelu_tanh_backward)(float *d, const float *pre, size_t n);
    float (*softmax_lse)(float *row, int n);
    void (*exp_shift)(float *row, int n, float c);
    void (*softmax_backward)(float *dp, const float *p, int n, float scale);
    double (*cross_entropy_row)(float *row, int V, int target, float grad_scale);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                              const float *bias, size_t rows, int C, float eps);
    void (*layernorm_backward_input)(float *dinp, const float *dout, const float *inp, const float *weight,
                                     const float *mean, const float *rstd, size_t rows, int C);
    void (*add)(float *out, const float *a, const float *b, size_t n);
    void (*activation_forward)(int act, float *out, const float *inp, size_t n);
    void (*activation_backward)(int act, float *d, const float *pre, size_t n);
    void (*dropout)(float *out, const float *x, size_t n, uint64_t key, uint64_t first, uint64_t threshold, float keep);
} lb_kernel_set;
// The set for a level, or NULL when this CPU cannot run it.
LB_HIDDEN const lb_kernel_set *lb_kernels_for(int level);

// LAPACKE (row-major). Return LAPACK's info.
LB_HIDDEN int lb_sgesdd(char jobz, int m, int n, float *a, int lda, float *s, float *u, int ldu, float *vt, int ldvt);
LB_HIDDEN int lb_sgeqrf(int m, int n, float *a, int lda, float *tau);
LB_HIDDEN int lb_sorgqr(int m, int n, int k, float *a, int lda, const float *tau);

#ifdef __cplusplus
}
#endif
#endif

// Thread-local last error message of the C ABI (copied, truncated to 4 KiB).
#ifdef __cplusplus
extern "C" {
#endif
LB_HIDDEN void lb_set_error(const char *message);
LB_HIDDEN const char *lb_get_error(void);
#ifdef __cplusplus
}
#endif
