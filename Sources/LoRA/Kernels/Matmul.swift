import CLoraSupport

// Matrix products over row-major buffers, through OpenBLAS.
// Kernels know nothing of models: buffers and shapes only.

package typealias FloatPtr = UnsafeMutablePointer<Float>
package typealias ConstFloatPtr = UnsafePointer<Float>

/// Products smaller than this many multiply-adds run on one thread.
let parallelGemmWork = 1 << 20

/// Products with at most this many rows of the left operand use liblora's
/// few-row kernels instead of sgemm (faster up to 128 rows on GPT-2's
/// shapes, Intel SkylakeX kernels: 85 vs 94 ms for 48 block products).
let smallGemmRows = 128

/// out[M, N] = inp[M, K] · W[K, N] + bias[N]   (GPT-2 Conv1D, W is [in, out], in its dtype).
/// With `accumulate`, adds to out instead of overwriting it.
package func matmulForward(
    out: FloatPtr, inp: ConstFloatPtr, weight: BaseMatrix, bias: ConstFloatPtr?,
    M: Int, K: Int, N: Int, accumulate: Bool = false
) {
    if M == 0 || N == 0 { return }
    if let bias {
        parallelChunks(M, minChunk: M * N >= 1 << 16 ? 16 : .max) { _, rows in
            for m in rows {
                let row = out + m * N
                if accumulate { for n in 0..<N { row[n] += bias[n] } } else { row.update(from: bias, count: N) }
            }
        }
    }
    let beta: Float = (accumulate || bias != nil) ? 1 : 0
    baseMatmul(transW: false, M: M, N: N, K: K, A: inp, lda: K, W: weight, beta: beta, C: out, ldc: N)
}

/// C[M, N] = A[M, K] · op(W) + beta · C for a frozen base weight W in its
/// dtype: op(W) = W [K, N] (`transW` false: Conv1D forward, the LM head's
/// backward) or Wᵀ with W [N, K] (the LM head, Conv1D backward dX = dY·Wᵀ).
/// Every product with a base weight goes through here; a kernel for another
/// dtype or shape slots into the switch.
/// - F32: the decode GEMV at M = 1 (2.3x faster than sgemm with M = 1 on
///   OpenBLAS); `gemm` otherwise (the few-row kernels up to smallGemmRows,
///   OpenBLAS sgemm split across the workers beyond).
/// - BF16/F16/Q8_0: at M = 1, when the product runs along the weight's input
///   dimension (forward), the dtype's GEMV (CLoraSupport/lowp.c: the F32
///   kernel's result on the dequantized weight); up to smallGemmRows rows,
///   the few-row kernels on tiles converted just before use
///   (gemm_small.c); more rows: with AVX-512 and OpenBLAS, liblora's
///   packed GEMM, which converts the weight while packing it
///   (gemm_packed.c); otherwise (oneDNN's sgemm, or no AVX-512) panels of
///   the weight converted to F32 in each worker's reused scratch, then
///   sgemm.
package func baseMatmul(
    transW: Bool, M: Int, N: Int, K: Int, A: ConstFloatPtr, lda: Int, W: BaseMatrix,
    beta: Float, C: FloatPtr, ldc: Int
) {
    if M == 0 || N == 0 { return }
    switch W.dtype {
    case .f32:
        guard let w = W.f32 else { return }
        if M == 1, beta == 0 || beta == 1, K > 0 {
            gemv(transA: !transW, rows: W.rows, cols: W.cols, alpha: 1, A: w, lda: W.cols, x: A, beta: beta, y: C)
        } else {
            gemm(
                transA: false, transB: transW, M: M, N: N, K: K, alpha: 1, A: A, lda: lda, B: w, ldb: W.cols,
                beta: beta, C: C, ldc: ldc)
        }
    case .bf16, .f16, .q8_0:
        if K == 0 {
            gemm(
                transA: false, transB: transW, M: M, N: N, K: 0, alpha: 1, A: A, lda: lda, B: A, ldb: 1,
                beta: beta, C: C, ldc: ldc)
        } else if M == 1, beta == 0 || beta == 1, transW != W.inputAlongRows {
            lowpGemv(transW: transW, x: A, W: W, beta0: beta == 0, y: C)
        } else {
            lowpPanelGemm(transW: transW, M: M, N: N, K: K, A: A, lda: lda, W: W, beta: beta, C: C, ldc: ldc)
        }
    }
}

/// y (+)= x · op(W) for one row x, along W's input dimension: y[N] = x[K]·W
/// for a Conv1D weight [K, N], y[R] = W[R, C]·x[C] for the LM head.
private func lowpGemv(transW: Bool, x: ConstFloatPtr, W: BaseMatrix, beta0: Bool, y: FloatPtr) {
    let level = lb_kernels_level()
    let b0: Int32 = beta0 ? 1 : 0
    if !transW,
        splitColumnsGemv(dtype: W.dtype.code, y: y, x: x, W: W.data, K: W.rows, N: W.cols, beta0: b0)
    {
        return
    }
    let minChunk = W.count < 1 << 16 ? Int.max : 64
    let code = W.dtype.code
    parallelChunks(transW ? W.rows : W.cols, minChunk: minChunk, align: 16) { _, r in
        if transW {
            lb_gemv_rows_lowp(
                level, code, y, x, W.data, W.scales, Int32(W.cols), Int32(W.cols), Int32(r.lowerBound), Int32(r.upperBound), b0)
        } else {
            lb_gemv_cols_lowp(
                level, code, y, x, W.data, W.scales, Int32(W.rows), Int32(W.cols), Int32(r.lowerBound), Int32(r.upperBound), b0)
        }
    }
}

/// y (+)= x·W[K, N] for one row x, where the AVX2 columns form splits the
/// product in two parts (lb_cols_split_at: rows [0, kh) and [kh, K), added
/// at the end): the workers take the parts, each reading whole rows of W in
/// long runs, instead of halves of every row. The same bits as one call over
/// all columns, for any worker count. False (nothing done) where the product
/// is not split or one worker would run it.
func splitColumnsGemv(
    dtype: Int32, y: FloatPtr, x: ConstFloatPtr, W: UnsafeRawPointer, K: Int, N: Int, beta0: Int32
) -> Bool {
    let level = lb_kernels_level()
    guard computeThreads > 1, K * N >= 1 << 16, lb_cols_split_at(level, dtype, Int32(K), Int32(N)) > 0 else {
        return false
    }
    withUnsafeTemporaryAllocation(of: Float.self, capacity: N) { hi in
        let h = hi.baseAddress!
        // Outputs of part 0 are 0..<N, of part 1 N..<2N.
        parallelChunks(2 * N, minChunk: 64, align: 16) { _, r in
            for part in 0..<2 {
                let lo = max(r.lowerBound, part * N) - part * N
                let up = min(r.upperBound, (part + 1) * N) - part * N
                if lo < up {
                    lb_gemv_cols_part(
                        level, dtype, part == 0 ? y : h, x, W, Int32(K), Int32(N), Int32(part), Int32(lo), Int32(up),
                        part == 0 ? beta0 : 1)
                }
            }
        }
        for n in 0..<N { y[n] += h[n] }
    }
    return true
}

/// Floats of a piece of a row longer than a panel (1 MiB), and the longest
/// row the few-row tiles take.
let panelFloats = 1 << 18
/// Column panels for sgemm (many rows): 1024 columns × 512 rows, 2 MiB.
/// OpenBLAS packs A again for every call, so wider panels mean fewer
/// packings of A: LoRA training (4 × 256 rows) on a bf16 base went from
/// 0.88 to 0.95–0.99 of F32's speed with them (256 × 1024 before).
let sgemmPanelColumns = 1024
let sgemmPanelFloats = 1 << 19
/// Row panels for sgemm with op(W) = Wᵀ (the LM head's forward, Conv1D's
/// dX = dY·Wᵀ): 8 MiB. Each call packs all of A again, so with 2 MiB
/// panels the LM head's forward on 512 rows of training packed them 75
/// times a chunk; 8 MiB: LoRA training 4 × 256 on a bf16 base +1.5% (median
/// of 10 alternating pairs, −2 to +3% each; Intel Emerald Rapids), 16 MB
/// more peak RSS.
let sgemmRowPanelFloats = 1 << 21

/// Products on a reduced-precision weight: each worker owns a range of
/// outputs. Up to smallGemmRows rows, the few-row kernels run on tiles of W
/// converted just before use, with the next tile prefetched (each row then
/// equals the decode kernel's result bit for bit, as for F32 weights, and
/// OpenBLAS's packing is not paid for a few rows; 16 BF16 sequences in the
/// engine: 315–326 tok/s with whole 1 MiB panels converted first, 397–420
/// with the tiles). More rows: with AVX-512 and OpenBLAS's sgemm the packed
/// GEMM (gemm_packed.c: LoRA training on a bf16 base 1.01× F32's speed,
/// 0.97× with the panels below; Intel); otherwise, also where oneDNN runs
/// the products, the part of W a worker needs is converted a panel at a
/// time into its thread's scratch (no allocation per call), then multiplied
/// by sgemm. Each weight is converted once per call.
private func lowpPanelGemm(
    transW: Bool, M: Int, N: Int, K: Int, A: ConstFloatPtr, lda: Int, W: BaseMatrix,
    beta: Float, C: FloatPtr, ldc: Int
) {
    let fewRows = M <= smallGemmRows && (beta == 0 || beta == 1) && lb_gemv_available() != 0
    let minChunk = M * N * K >= parallelGemmWork ? 32 : .max
    if fewRows && (!transW || K <= panelFloats) {
        // The few-row kernels on tiles converted just before use (L1-sized
        // for the columns form, a few rows of W for the rows form).
        let level = lb_kernels_level()
        let code = W.dtype.code
        let layout: Int32 = W.inputAlongRows ? 1 : 0
        let b0: Int32 = beta == 0 ? 1 : 0
        parallelChunks(N, minChunk: minChunk, align: 32) { _, r in
            if transW {
                let tileFloats = max(K, Int(LB_ROWS_TILE_FLOATS))
                withPanelScratch(tileFloats) { s in
                    lb_gemm_rows_lowp_at(
                        level, code, layout, C, Int32(ldc), A, Int32(lda), Int32(M), W.data, W.scales, Int32(K),
                        Int32(r.lowerBound), Int32(r.upperBound), b0, s, tileFloats)
                }
            } else {
                lb_gemm_cols_lowp_at(
                    level, code, layout, C, Int32(ldc), A, Int32(lda), Int32(M), W.data, W.scales, Int32(K), Int32(W.cols),
                    Int32(r.lowerBound), Int32(r.upperBound), b0)
            }
        }
        return
    }
    if beta == 0 || beta == 1, W.dtype == .bf16, lb_gemm_amx_available() != 0 {
        // With AMX (Sapphire Rapids and later), a bf16 weight against the
        // activations split exactly into three bf16 parts (gemm_packed.c).
        let floats = lb_gemm_packed_scratch_floats()
        let trans: Int32 = transW ? 1 : 0
        let b0: Int32 = beta == 0 ? 1 : 0
        let w = W.data.assumingMemoryBound(to: UInt16.self)
        parallelChunks(N, minChunk: minChunk, align: 32) { _, r in
            withPanelScratch(floats) { s in
                lb_gemm_amx_bf16(
                    trans, Int32(M), Int32(K), A, Int32(lda), w, Int32(W.cols), C, Int32(ldc), Int32(r.lowerBound),
                    Int32(r.upperBound), b0, s)
            }
        }
        return
    }
    let level = lb_kernels_level()
    let onednn = lb_sgemm_is_onednn() != 0
    if beta == 0 || beta == 1, lb_gemm_packed_available(level, W.dtype.code) != 0, !onednn {
        // The packed GEMM converts the weight while packing it. oneDNN's
        // sgemm on the converted panels below is faster than it (AMD EPYC,
        // medians of the two interleaved in one process: LoRA training
        // 4 × 256 on a bf16 base 254–256 → 290–293 tok/s; prefill 512
        // bf16 494 → 575, f16 455 → 566, q8_0 511 → 585).
        let floats = lb_gemm_packed_scratch_floats()
        let trans: Int32 = transW ? 1 : 0
        let layout: Int32 = W.inputAlongRows ? 1 : 0
        let b0: Int32 = beta == 0 ? 1 : 0
        parallelChunks(N, minChunk: minChunk, align: 32) { _, r in
            withPanelScratch(floats) { s in
                lb_gemm_packed_lowp(
                    W.dtype.code, layout, trans, Int32(M), Int32(K), A, Int32(lda), W.data, W.scales, Int32(W.cols), C,
                    Int32(ldc), Int32(r.lowerBound), Int32(r.upperBound), b0, s)
            }
        }
        return
    }
    // oneDNN packs A again for each call as OpenBLAS does; with the larger
    // panels a worker's whole share of GPT-2's products is one call.
    parallelChunks(N, minChunk: minChunk, align: 32) { _, r in
        let floats = transW || onednn ? sgemmRowPanelFloats : sgemmPanelFloats
        withPanelScratch(floats) { s in
            if transW {
                // C[:, n0..<n1] = A · W[n0..<n1, :]ᵀ, rows of W a panel at a time.
                let p = max(16, floats / K / 16 * 16)
                var n0 = r.lowerBound
                while n0 < r.upperBound {
                    let nb = min(p, r.upperBound - n0)
                    if nb * K > floats {  // K beyond the panel: a row at a time
                        for n in n0..<n0 + nb { rowTimesPanel(n, M: M, K: K, A: A, lda: lda, W: W, beta: beta, C: C, ldc: ldc, s: s) }
                    } else {
                        W.dequantize(into: s, ldd: K, rows: n0..<n0 + nb, cols: 0..<K)
                        lb_sgemm(0, 1, Int32(M), Int32(nb), Int32(K), 1, A, Int32(lda), s, Int32(K), beta, C + n0, Int32(ldc))
                    }
                    n0 += nb
                }
            } else {
                // C[:, n0..<n1] = Σ over row panels k of A[:, k] · W[k, n0..<n1].
                let nbMax = onednn ? max(16, floats / K / 16 * 16) : sgemmPanelColumns
                let kbMax = max(1, floats / nbMax)
                var n0 = r.lowerBound
                while n0 < r.upperBound {
                    let nb = min(nbMax, r.upperBound - n0)
                    var k0 = 0
                    while k0 < K {
                        let kb = min(kbMax, K - k0)
                        W.dequantize(into: s, ldd: nb, rows: k0..<k0 + kb, cols: n0..<n0 + nb)
                        lb_sgemm(
                            0, 0, Int32(M), Int32(nb), Int32(kb), 1, A + k0, Int32(lda), s, Int32(nb), k0 == 0 ? beta : 1,
                            C + n0, Int32(ldc))
                        k0 += kb
                    }
                    n0 += nb
                }
            }
        }
    }
}

/// Column n of C = A · W[n, :]ᵀ for a row longer than a panel, in panel-sized pieces.
private func rowTimesPanel(
    _ n: Int, M: Int, K: Int, A: ConstFloatPtr, lda: Int, W: BaseMatrix, beta: Float, C: FloatPtr, ldc: Int, s: FloatPtr
) {
    var k0 = 0
    while k0 < K {
        let kb = min(panelFloats, K - k0)
        W.dequantize(into: s, ldd: kb, rows: n..<n + 1, cols: k0..<k0 + kb)
        lb_sgemm(0, 1, Int32(M), 1, Int32(kb), 1, A + k0, Int32(lda), s, Int32(kb), k0 == 0 ? beta : 1, C + n, Int32(ldc))
        k0 += kb
    }
}

/// The calling thread's scratch of `count` floats (see lb_thread_scratch);
/// a temporary allocation only if that one cannot grow.
@inline(__always)
func withPanelScratch(_ count: Int, _ body: (FloatPtr) -> Void) {
    if let s = lb_thread_scratch(count) {
        body(s)
    } else {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { body($0.baseAddress!) }
    }
}

/// C[M, N] = alpha · op(A) · op(B) + beta · C with explicit row strides.
/// Large products are split across the workers along M or N (the larger),
/// never along K.
/// `fewRows: false` keeps a product off the few-row kernels (OpenBLAS
/// only): for op(B) = Bᵀ with short rows their per-output reduction costs
/// more than OpenBLAS's packing.
package func gemm(
    transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float,
    A: ConstFloatPtr, lda: Int, B: ConstFloatPtr, ldb: Int,
    beta: Float, C: FloatPtr, ldc: Int, fewRows: Bool = true
) {
    if M == 0 || N == 0 { return }
    if K == 0 {
        if beta == 0 {
            for m in 0..<M { (C + m * ldc).update(repeating: 0, count: N) }
        } else if beta != 1 {
            for m in 0..<M { for n in 0..<N { C[m * ldc + n] *= beta } }
        }
        return
    }
    if fewRows, !transA, alpha == 1, beta == 0 || beta == 1, M <= smallGemmRows, lb_gemv_available() != 0 {
        // Few rows: see matmulForward. op(B) = Bᵀ reads B's rows (the tied LM
        // head [vocab, C], LoRA's A [r, in]), B reads its columns.
        let beta0: Int32 = beta == 0 ? 1 : 0
        let minChunk = M * N * K < parallelGemmWork ? Int.max : 64
        parallelChunks(N, minChunk: minChunk, align: 16) { _, r in
            if transB {
                lb_gemm_rows(
                    C, Int32(ldc), A, Int32(lda), Int32(M), B, Int32(K), Int32(ldb), Int32(r.lowerBound),
                    Int32(r.upperBound), beta0)
            } else {
                lb_gemm_cols(
                    C, Int32(ldc), A, Int32(lda), Int32(M), B, Int32(K), Int32(ldb), Int32(r.lowerBound),
                    Int32(r.upperBound), beta0)
            }
        }
        return
    }
    let ta: Int32 = transA ? 1 : 0
    let tb: Int32 = transB ? 1 : 0
    if M * N * K < parallelGemmWork || computeThreads <= 1 {
        lb_sgemm(ta, tb, Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
        return
    }
    let splitRows = M > N
    parallelChunks(splitRows ? M : N, minChunk: 16, align: 16) { _, r in
        let len = Int32(r.count)
        if splitRows {
            let a = transA ? A + r.lowerBound : A + r.lowerBound * lda
            lb_sgemm(ta, tb, len, Int32(N), Int32(K), alpha, a, Int32(lda), B, Int32(ldb), beta, C + r.lowerBound * ldc, Int32(ldc))
        } else {
            let b = transB ? B + r.lowerBound * ldb : B + r.lowerBound
            lb_sgemm(ta, tb, Int32(M), len, Int32(K), alpha, A, Int32(lda), b, Int32(ldb), beta, C + r.lowerBound, Int32(ldc))
        }
    }
}

/// y[rows] = alpha · A[rows, cols] · x[cols] + beta · y  (or Aᵀ·x with `transA`, giving y[cols]).
/// Large products are split across the workers along y.
package func gemv(
    transA: Bool, rows: Int, cols: Int, alpha: Float, A: ConstFloatPtr, lda: Int,
    x: ConstFloatPtr, beta: Float, y: FloatPtr
) {
    if rows == 0 || cols == 0 { return }
    if alpha == 1, beta == 0 || beta == 1, lb_gemv_available() != 0 {
        // liblora's own kernels (CLoraSupport/gemv.c): streaming at the
        // memory bandwidth, where OpenBLAS's sgemv reached 75–85% of it.
        let beta0: Int32 = beta == 0 ? 1 : 0
        if transA, lda == cols,
            splitColumnsGemv(dtype: LB_DTYPE_F32, y: y, x: x, W: UnsafeRawPointer(A), K: rows, N: cols, beta0: beta0)
        {
            return
        }
        let outputs = transA ? cols : rows
        let minChunk = rows * cols < 1 << 16 ? Int.max : 64
        parallelChunks(outputs, minChunk: minChunk, align: 16) { _, r in
            if transA {
                lb_gemv_cols(y, x, A, Int32(rows), Int32(lda), Int32(r.lowerBound), Int32(r.upperBound), beta0)
            } else {
                lb_gemv_rows(y, x, A, Int32(cols), Int32(lda), Int32(r.lowerBound), Int32(r.upperBound), beta0)
            }
        }
        return
    }
    let ta: Int32 = transA ? 1 : 0
    if rows * cols < 1 << 16 || computeThreads <= 1 {
        lb_sgemv(ta, Int32(rows), Int32(cols), alpha, A, Int32(lda), x, beta, y)
        return
    }
    parallelChunks(transA ? cols : rows, minChunk: 64, align: 16) { _, r in
        let len = Int32(r.count)
        if transA {
            // y[r] = A[:, r]ᵀ · x
            lb_sgemv(1, Int32(rows), len, alpha, A + r.lowerBound, Int32(lda), x, beta, y + r.lowerBound)
        } else {
            lb_sgemv(0, len, Int32(cols), alpha, A + r.lowerBound * lda, Int32(lda), x, beta, y + r.lowerBound)
        }
    }
}

/// dinp[M, K] (+)= dout[M, N] · W[K, N]ᵀ;  dweight[K, N] += inpᵀ · dout;  dbias[N] += Σ_m dout.
/// `accumulate` false overwrites dinp. W is the base weight in its dtype.
package func matmulBackward(
    dinp: FloatPtr?, dweight: FloatPtr?, dbias: FloatPtr?,
    dout: ConstFloatPtr, inp: ConstFloatPtr, weight: BaseMatrix,
    M: Int, K: Int, N: Int, accumulate: Bool
) {
    if let dinp {
        baseMatmul(transW: true, M: M, N: K, K: N, A: dout, lda: N, W: weight, beta: accumulate ? 1 : 0, C: dinp, ldc: K)
    }
    if let dweight {
        gemm(
            transA: true, transB: false, M: K, N: N, K: M, alpha: 1, A: inp, lda: K, B: dout, ldb: N,
            beta: 1, C: dweight, ldc: N)
    }
    if let dbias {
        parallelChunks(N, minChunk: 64, align: 16) { _, cols in
            for m in 0..<M {
                let row = dout + m * N
                for n in cols { dbias[n] += row[n] }
            }
        }
    }
}
