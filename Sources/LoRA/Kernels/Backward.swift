import CLoraSupport
import Foundation

// Backward kernels. Gradients carry a `d` prefix and come first; unless a
// comment says otherwise they accumulate (+=) into their outputs.

/// dinp[M, K] (+)= dout[M, N] · W[K, N]ᵀ;  dweight[K, N] += inpᵀ · dout;  dbias[N] += Σ_m dout.
/// `accumulate` false overwrites dinp.
public func matmulBackward(dinp: FloatPtr?, dweight: FloatPtr?, dbias: FloatPtr?,
                           dout: ConstFloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr,
                           M: Int, K: Int, N: Int, accumulate: Bool) {
    if let dinp {
        gemm(transA: false, transB: true, M: M, N: K, K: N, alpha: 1, A: dout, lda: N, B: weight, ldb: N,
             beta: accumulate ? 1 : 0, C: dinp, ldc: K)
    }
    if let dweight {
        gemm(transA: true, transB: false, M: K, N: N, K: M, alpha: 1, A: inp, lda: K, B: dout, ldb: N,
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

/// LayerNorm backward (rows of C): dinp += ∂L/∂x; dweight, dbias += (when given).
public func layerNormBackward(dinp: FloatPtr, dweight: FloatPtr?, dbias: FloatPtr?,
                              dout: ConstFloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr,
                              mean: ConstFloatPtr, rstd: ConstFloatPtr, rows: Int, C: Int) {
    parallelChunks(rows, minChunk: max(1, 8192 / max(C, 1))) { _, range in
        let r0 = range.lowerBound
        lb_layernorm_backward_input(dinp + r0 * C, dout + r0 * C, inp + r0 * C, weight, mean + r0, rstd + r0, range.count, Int32(C))
    }
    // Parameter gradients: sums over rows, split by columns (same order as one thread).
    guard let dweight, let dbias else { return }
    parallelChunks(C, minChunk: 64, align: 16) { _, cols in
        for r in 0..<rows {
            let dy = dout + r * C, x = inp + r * C
            let m = mean[r], s = rstd[r]
            for i in cols {
                dweight[i] += dy[i] * (x[i] - m) * s
                dbias[i] += dy[i]
            }
        }
    }
}

/// d[n] = d[n] · act′(pre[n])  (in place: d holds ∂L/∂act(pre) on entry, ∂L/∂pre on exit).
public func activationBackward(_ act: Activation, d: FloatPtr, pre: ConstFloatPtr, n: Int) {
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        activationBackwardSerial(act, d: d + r.lowerBound, pre: pre + r.lowerBound, n: r.count)
    }
}

func activationBackwardSerial(_ act: Activation, d: FloatPtr, pre: ConstFloatPtr, n: Int) {
    switch act {
    case .geluNew, .geluPytorchTanh, .geluFast:
        lb_gelu_tanh_backward(d, pre, n)
    case .gelu, .geluPython:
        for i in 0..<n {
            let x = pre[i]
            let cdf = 0.5 * (1 + erf(x * 0.7071067811865476))
            let pdf = Foundation.exp(-0.5 * x * x) * 0.3989422804014327
            d[i] *= cdf + x * pdf
        }
    case .quickGelu:
        for i in 0..<n { let x = pre[i]; let s = 1 / (1 + Foundation.exp(-1.702 * x)); d[i] *= s + 1.702 * x * s * (1 - s) }
    case .relu:
        for i in 0..<n where !(pre[i] > 0) { d[i] = 0 }
    case .silu, .swish:
        for i in 0..<n { let x = pre[i]; let s = 1 / (1 + Foundation.exp(-x)); d[i] *= s * (1 + x * (1 - s)) }
    case .tanh:
        for i in 0..<n { let t = Foundation.tanh(pre[i]); d[i] *= 1 - t * t }
    case .sigmoid:
        for i in 0..<n { let s = 1 / (1 + Foundation.exp(-pre[i])); d[i] *= s * (1 - s) }
    case .linear:
        break
    }
}

/// Attention backward for one (batch row, head), the inverse of attentionForward.
/// Accumulates dq[T, hd], dk[L, hd], dv[L, hd] (strided). The attention
/// weights are recomputed block by block from q, k and the forward's
/// log-sum-exp lse[T] (flash-attention style: no [T, L] weights kept);
/// scratch holds attentionBackwardScratch(T:L:) floats.
public func attentionBackward(dq: FloatPtr, ldq: Int, dk: FloatPtr, dv: FloatPtr, ldk: Int, scratch: FloatPtr,
                              dout: ConstFloatPtr, ldo: Int, lse: ConstFloatPtr,
                              q: ConstFloatPtr, k: ConstFloatPtr, v: ConstFloatPtr,
                              T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?) {
    let P = scratch, dP = scratch + min(T, attentionBlock) * L
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let rows = i1 - i0
        let keys = min(L, past + i1)
        // P = exp(scale · Q·Kᵀ − lse) on the visible keys, zeros elsewhere;
        // the scores by the same product as the forward (bit-identical).
        if T == 1 {
            gemv(transA: false, rows: keys, cols: hd, alpha: scale, A: k, lda: ldk, x: q, beta: 0, y: P)
        } else {
            gemm(transA: false, transB: true, M: rows, N: keys, K: hd, alpha: scale,
                 A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: P, ldc: L)
        }
        for i in 0..<rows {
            let row = P + i * L
            let visible = min(past + i0 + i + 1, L), c = lse[i0 + i]
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
        gemm(transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: P, lda: L,
             B: dout + i0 * ldo, ldb: ldo, beta: 1, C: dv, ldc: ldk)
        // dP = dO · Vᵀ
        gemm(transA: false, transB: true, M: rows, N: keys, K: hd, alpha: 1, A: dout + i0 * ldo, lda: ldo,
             B: v, ldb: ldk, beta: 0, C: dP, ldc: L)
        // dS = P ⊙ (dP − Σ_j P·dP) · scale
        for i in 0..<rows { lb_softmax_backward(dP + i * L, P + i * L, Int32(keys), scale) }
        // dQ += dS · K ;  dK[keys] += dSᵀ · Q
        gemm(transA: false, transB: false, M: rows, N: hd, K: keys, alpha: 1, A: dP, lda: L, B: k, ldb: ldk,
             beta: 1, C: dq + i0 * ldq, ldc: ldq)
        gemm(transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: dP, lda: L, B: q + i0 * ldq, ldb: ldq,
             beta: 1, C: dk, ldc: ldk)
        i0 = i1
    }
}

/// Next-token cross-entropy over a chunk of rows, fused with its gradient.
/// logits[rows, V] are replaced by ∂L/∂logits = gradScale · (softmax − onehot);
/// rows whose target is negative (ignored) get zeros. Returns the summed loss (nats).
public func crossEntropyForwardBackward(logits: FloatPtr, targets: UnsafePointer<Int32>, rows: Int, V: Int,
                                        gradScale: Float) -> Double {
    // Per-row losses summed in row order afterwards: the total does not depend on the split.
    var rowLoss = [Double](repeating: 0, count: rows)
    rowLoss.withUnsafeMutableBufferPointer { lossBuf in
        guard let losses = lossBuf.baseAddress else { return }
        parallelChunks(rows, minChunk: 1) { _, range in
            for r in range {
                let row = logits + r * V
                let t = Int(targets[r])
                if t < 0 || t >= V {
                    row.update(repeating: 0, count: V)
                    continue
                }
                losses[r] = lb_cross_entropy_row(row, Int32(V), Int32(t), gradScale)
            }
        }
    }
    var total = 0.0
    for l in rowLoss { total += l }
    return total
}

/// dwte[ids[i]] += dout[i]; dwpe[positions[i]] += dout[i]  (rows of C).
public func embeddingBackward(dwte: FloatPtr, dwpe: FloatPtr, dout: ConstFloatPtr,
                              ids: UnsafePointer<Int32>, positions: UnsafePointer<Int32>, n: Int, C: Int) {
    for i in 0..<n {
        let d = dout + i * C
        let t = dwte + Int(ids[i]) * C, p = dwpe + Int(positions[i]) * C
        for c in 0..<C { t[c] += d[c]; p[c] += d[c] }
    }
}
