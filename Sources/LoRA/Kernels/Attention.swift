import CLoraSupport

// Causal self-attention for one (batch row, head), over strided buffers.

/// Query rows per block: blocks skip the keys their causal mask hides.
let attentionBlock = 64

/// out[T, hd] (row stride ldo) = softmax(scale · q[T, hd] · k[L, hd]ᵀ, causal + key mask) · v[L, hd]
/// Query i sits at absolute position past + i and sees keys j ≤ past + i whose
/// keyMask[j] is non-zero (keyMask nil: all keys). probs[T, L] receives the
/// attention weights (zeros where masked); rows that see no key give zeros.
/// lse[T], when given, receives each row's log-sum-exp of the visible scaled
/// scores (-inf for a row that sees no key): all backward needs to recompute
/// the weights, instead of keeping probs.
public func attentionForward(out: FloatPtr, ldo: Int, probs: FloatPtr,
                             q: ConstFloatPtr, ldq: Int, k: ConstFloatPtr, ldk: Int, v: ConstFloatPtr, ldv: Int,
                             T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?,
                             lse: FloatPtr? = nil) {
    if T == 1 {
        gemv(transA: false, rows: L, cols: hd, alpha: scale, A: k, lda: ldk, x: q, beta: 0, y: probs)
        attentionSoftmaxRows(probs: probs, rows: 0..<1, L: L, past: past, keyMask: keyMask, lse: lse)
        gemv(transA: true, rows: L, cols: hd, alpha: 1, A: v, lda: ldv, x: probs, beta: 0, y: out)
        return
    }
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let keys = min(L, past + i1)  // keys any row of this block can see
        gemm(transA: false, transB: true, M: i1 - i0, N: keys, K: hd, alpha: scale,
             A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: probs + i0 * L, ldc: L)
        attentionSoftmaxRows(probs: probs, rows: i0..<i1, L: L, past: past, keyMask: keyMask, lse: lse)
        gemm(transA: false, transB: false, M: i1 - i0, N: hd, K: keys, alpha: 1,
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
public func attentionBackwardScratch(T: Int, L: Int) -> Int { 2 * min(T, attentionBlock) * L }
