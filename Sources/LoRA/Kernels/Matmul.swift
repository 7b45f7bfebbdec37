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

/// out[M, N] = inp[M, K] · W[K, N] + bias[N]   (GPT-2 Conv1D, W is [in, out]).
/// With `accumulate`, adds to out instead of overwriting it.
/// M == 1 uses sgemv (2.3x faster than sgemm with M = 1 on OpenBLAS).
package func matmulForward(
    out: FloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr, bias: ConstFloatPtr?,
    M: Int, K: Int, N: Int, accumulate: Bool = false
) {
    if M == 0 || N == 0 { return }
    if M == 1 {
        if let bias {
            if accumulate { for n in 0..<N { out[n] += bias[n] } } else { out.update(from: bias, count: N) }
        }
        let beta: Float = (accumulate || bias != nil) ? 1 : 0
        if K == 0 { if beta == 0 { out.update(repeating: 0, count: N) }; return }
        gemv(transA: true, rows: K, cols: N, alpha: 1, A: weight, lda: N, x: inp, beta: beta, y: out)
        return
    }
    if M <= smallGemmRows, K > 0, lb_gemv_available() != 0 {
        // Few rows (engine steps, short prompts): liblora's kernels read each
        // weight once for all rows, where sgemm packs all of W per call
        // (CLoraSupport/gemm_small.c). Split by columns only, so each row's
        // numbers are the decode kernel's whatever M is.
        let minChunk = M * N * K < parallelGemmWork ? Int.max : 64
        parallelChunks(N, minChunk: minChunk, align: 16) { _, r in
            if let bias {
                for m in 0..<M {
                    let row = out + m * N
                    if accumulate {
                        for n in r { row[n] += bias[n] }
                    } else {
                        (row + r.lowerBound).update(from: bias + r.lowerBound, count: r.count)
                    }
                }
            }
            let beta0: Int32 = accumulate || bias != nil ? 0 : 1
            lb_gemm_cols(
                out, Int32(N), inp, Int32(K), Int32(M), weight, Int32(K), Int32(N), Int32(r.lowerBound),
                Int32(r.upperBound), beta0)
        }
        return
    }
    // Split the columns (each worker packs all of inp, a share of W) or, for
    // narrow outputs, the rows; the bias is written by the worker that owns it.
    let splitRows = M > N
    let work = M * N * max(K, 1)
    parallelChunks(splitRows ? M : N, minChunk: work >= parallelGemmWork ? 16 : .max, align: 16) { _, r in
        let m0 = splitRows ? r.lowerBound : 0
        let m1 = splitRows ? r.upperBound : M
        let n0 = splitRows ? 0 : r.lowerBound
        let n1 = splitRows ? N : r.upperBound
        var beta: Float = accumulate ? 1 : 0
        if let bias {
            for m in m0..<m1 {
                let row = out + m * N
                if accumulate { for n in n0..<n1 { row[n] += bias[n] } } else { (row + n0).update(from: bias + n0, count: n1 - n0) }
            }
            beta = 1
        }
        if K == 0 {
            if beta == 0 { for m in m0..<m1 { (out + m * N + n0).update(repeating: 0, count: n1 - n0) } }
            return
        }
        lb_sgemm(
            0, 0, Int32(m1 - m0), Int32(n1 - n0), Int32(K), 1, inp + m0 * K, Int32(K),
            weight + n0, Int32(N), beta, out + m0 * N + n0, Int32(N))
    }
}

/// C[M, N] = alpha · op(A) · op(B) + beta · C with explicit row strides.
/// Large products are split across the workers along M or N (the larger),
/// never along K.
package func gemm(
    transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float,
    A: ConstFloatPtr, lda: Int, B: ConstFloatPtr, ldb: Int,
    beta: Float, C: FloatPtr, ldc: Int
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
    if !transA, alpha == 1, beta == 0 || beta == 1, M <= smallGemmRows, lb_gemv_available() != 0 {
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
/// `accumulate` false overwrites dinp.
package func matmulBackward(
    dinp: FloatPtr?, dweight: FloatPtr?, dbias: FloatPtr?,
    dout: ConstFloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr,
    M: Int, K: Int, N: Int, accumulate: Bool
) {
    if let dinp {
        gemm(
            transA: false, transB: true, M: M, N: K, K: N, alpha: 1, A: dout, lda: N, B: weight, ldb: N,
            beta: accumulate ? 1 : 0, C: dinp, ldc: K)
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
