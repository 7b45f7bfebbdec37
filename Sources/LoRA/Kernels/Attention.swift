import CLoraSupport

// Causal self-attention for one (batch row, head), over strided buffers,
// forward and backward.

/// Query rows per block: blocks skip the keys their causal mask hides.
let attentionBlock = 64

/// out[T, hd] (row stride ldo) = softmax(scale · q[T, hd] · k[L, hd]ᵀ, causal + key mask) · v[L, hd]
/// Query i sits at absolute position past + i and sees keys j ≤ past + i whose
/// keyMask[j] is non-zero (keyMask nil: all keys). probs[T, L] receives the
/// attention weights (zeros where masked); rows that see no key give zeros.
/// lse[T], when given, receives each row's log-sum-exp of the visible scaled
/// scores (-inf for a row that sees no key): all backward needs to recompute
/// the weights, instead of keeping probs.
package func attentionForward(
    out: FloatPtr, ldo: Int, probs: FloatPtr,
    q: ConstFloatPtr, ldq: Int, k: ConstFloatPtr, ldk: Int, v: ConstFloatPtr, ldv: Int,
    T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?,
    lse: FloatPtr? = nil
) {
    if T == 1 {
        // scale on q (hd values): liblora's matrix–vector kernels take alpha = 1 only.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { sq in
            for i in 0..<hd { sq[i] = scale * q[i] }
            gemv(transA: false, rows: L, cols: hd, alpha: 1, A: k, lda: ldk, x: sq.baseAddress!, beta: 0, y: probs)
        }
        attentionSoftmaxRows(probs: probs, rows: 0..<1, L: L, past: past, keyMask: keyMask, lse: lse)
        gemv(transA: true, rows: L, cols: hd, alpha: 1, A: v, lda: ldv, x: probs, beta: 0, y: out)
        return
    }
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let keys = min(L, past + i1)  // keys any row of this block can see
        gemm(
            transA: false, transB: true, M: i1 - i0, N: keys, K: hd, alpha: scale,
            A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: probs + i0 * L, ldc: L)
        attentionSoftmaxRows(probs: probs, rows: i0..<i1, L: L, past: past, keyMask: keyMask, lse: lse)
        gemm(
            transA: false, transB: false, M: i1 - i0, N: hd, K: keys, alpha: 1,
            A: probs + i0 * L, lda: L, B: v, ldb: ldv, beta: 0, C: out + i0 * ldo, ldc: ldo)
        i0 = i1
    }
}

/// Masked softmax of the score rows in place; zeros beyond each row's causal limit.
@inline(__always)
func attentionSoftmaxRows(probs: FloatPtr, rows: Range<Int>, L: Int, past: Int, keyMask: ConstFloatPtr?, lse: FloatPtr?) {
    for i in rows {
        let row = probs + i * L
        let visible = min(past + i + 1, L)
        if let keyMask {
            for j in 0..<visible where keyMask[j] == 0 { row[j] = -.infinity }
        }
        let s = lb_softmax_lse(row, Int32(visible))
        lse?[i] = s
        if visible < L { (row + visible).update(repeating: 0, count: L - visible) }
    }
}

/// The scratch attentionBackward needs: two blocks of rows of scores.
package func attentionBackwardScratch(T: Int, L: Int) -> Int { 2 * min(T, attentionBlock) * L }

/// Attention backward for one (batch row, head), the inverse of attentionForward.
/// Accumulates dq[T, hd], dk[L, hd], dv[L, hd] (strided). The attention
/// weights are recomputed block by block from q, k and the forward's
/// log-sum-exp lse[T] (flash-attention style: no [T, L] weights kept);
/// scratch holds attentionBackwardScratch(T:L:) floats.
package func attentionBackward(
    dq: FloatPtr, ldq: Int, dk: FloatPtr, dv: FloatPtr, ldk: Int, scratch: FloatPtr,
    dout: ConstFloatPtr, ldo: Int, lse: ConstFloatPtr,
    q: ConstFloatPtr, k: ConstFloatPtr, v: ConstFloatPtr,
    T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?
) {
    let P = scratch
    let dP = scratch + min(T, attentionBlock) * L
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let rows = i1 - i0
        let keys = min(L, past + i1)
        // P = exp(scale · Q·Kᵀ − lse) on the visible keys, zeros elsewhere;
        // the scores by the same product as the forward (bit-identical).
        if T == 1 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { sq in
                for i in 0..<hd { sq[i] = scale * q[i] }
                gemv(transA: false, rows: keys, cols: hd, alpha: 1, A: k, lda: ldk, x: sq.baseAddress!, beta: 0, y: P)
            }
        } else {
            gemm(
                transA: false, transB: true, M: rows, N: keys, K: hd, alpha: scale,
                A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: P, ldc: L)
        }
        for i in 0..<rows {
            let row = P + i * L
            let visible = min(past + i0 + i + 1, L)
            let c = lse[i0 + i]
            if c == -.infinity {
                row.update(repeating: 0, count: keys)
                continue
            }
            if let keyMask {
                for j in 0..<visible where keyMask[j] == 0 { row[j] = -.infinity }
            }
            lb_exp_shift(row, Int32(visible), c)
            if visible < keys { (row + visible).update(repeating: 0, count: keys - visible) }
        }
        // dV[keys] += Pᵀ · dO
        gemm(
            transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: P, lda: L,
            B: dout + i0 * ldo, ldb: ldo, beta: 1, C: dv, ldc: ldk)
        // dP = dO · Vᵀ: dot products of hd (64) values, which OpenBLAS does
        // faster than the few-row kernels' reduction per output (LoRA
        // training at 1 × 1024 tokens: +2 to +7%, Intel Emerald Rapids).
        gemm(
            transA: false, transB: true, M: rows, N: keys, K: hd, alpha: 1, A: dout + i0 * ldo, lda: ldo,
            B: v, ldb: ldk, beta: 0, C: dP, ldc: L, fewRows: false)
        // dS = P ⊙ (dP − Σ_j P·dP) · scale
        for i in 0..<rows { lb_softmax_backward(dP + i * L, P + i * L, Int32(keys), scale) }
        // dQ += dS · K ;  dK[keys] += dSᵀ · Q
        gemm(
            transA: false, transB: false, M: rows, N: hd, K: keys, alpha: 1, A: dP, lda: L, B: k, ldb: ldk,
            beta: 1, C: dq + i0 * ldq, ldc: ldq)
        gemm(
            transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: dP, lda: L, B: q + i0 * ldq, ldb: ldq,
            beta: 1, C: dk, ldc: ldk)
        i0 = i1
    }
}
