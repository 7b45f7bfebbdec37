// Causal self-attention for one (batch row, head), over strided buffers.

/// out[T, hd] (row stride ldo) = softmax(scale · q[T, hd] · k[L, hd]ᵀ, causal + key mask) · v[L, hd]
/// Query i sits at absolute position past + i and sees keys j ≤ past + i whose
/// keyMask[j] is non-zero (keyMask nil: all keys). probs[T, L] receives the
/// attention weights (zeros where masked); rows that see no key give zeros.
public func attentionForward(out: FloatPtr, ldo: Int, probs: FloatPtr,
                             q: ConstFloatPtr, ldq: Int, k: ConstFloatPtr, ldk: Int, v: ConstFloatPtr, ldv: Int,
                             T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?) {
    if T == 1 {
        gemv(transA: false, rows: L, cols: hd, alpha: scale, A: k, lda: ldk, x: q, beta: 0, y: probs)
    } else {
        gemm(transA: false, transB: true, M: T, N: L, K: hd, alpha: scale, A: q, lda: ldq, B: k, ldb: ldk,
             beta: 0, C: probs, ldc: L)
    }
    for i in 0..<T {
        let row = probs + i * L
        let visible = min(past + i + 1, L)
        if let keyMask {
            for j in 0..<visible where keyMask[j] == 0 { row[j] = -.infinity }
        }
        softmaxInPlace(row, n: visible)
        if visible < L { (row + visible).update(repeating: 0, count: L - visible) }
    }
    if T == 1 {
        gemv(transA: true, rows: L, cols: hd, alpha: 1, A: v, lda: ldv, x: probs, beta: 0, y: out)
    } else {
        gemm(transA: false, transB: false, M: T, N: hd, K: L, alpha: 1, A: probs, lda: L, B: v, ldb: ldv,
             beta: 0, C: out, ldc: ldo)
    }
}
