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
        for m in 0..<M {
            let row = dout + m * N
            for n in 0..<N { dbias[n] += row[n] }
        }
    }
}

/// LayerNorm backward (rows of C): dinp += ∂L/∂x; dweight, dbias += (when given).
public func layerNormBackward(dinp: FloatPtr, dweight: FloatPtr?, dbias: FloatPtr?,
                              dout: ConstFloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr,
                              mean: ConstFloatPtr, rstd: ConstFloatPtr, rows: Int, C: Int) {
    for r in 0..<rows {
        let dy = dout + r * C, x = inp + r * C, dx = dinp + r * C
        let m = mean[r], s = rstd[r]
        var dnormMean: Float = 0, dnormNormMean: Float = 0
        for i in 0..<C {
            let norm = (x[i] - m) * s
            let dnorm = weight[i] * dy[i]
            dnormMean += dnorm
            dnormNormMean += dnorm * norm
        }
        dnormMean /= Float(C)
        dnormNormMean /= Float(C)
        for i in 0..<C {
            let norm = (x[i] - m) * s
            let dnorm = weight[i] * dy[i]
            dx[i] += s * (dnorm - dnormMean - norm * dnormNormMean)
        }
        if let dweight, let dbias {
            for i in 0..<C {
                dweight[i] += dy[i] * (x[i] - m) * s
                dbias[i] += dy[i]
            }
        }
    }
}

/// d[n] = d[n] · act′(pre[n])  (in place: d holds ∂L/∂act(pre) on entry, ∂L/∂pre on exit).
public func activationBackward(_ act: Activation, d: FloatPtr, pre: ConstFloatPtr, n: Int) {
    switch act {
    case .geluNew, .geluPytorchTanh, .geluFast:
        let k = Vec(repeating: 0.7978845608028654), c = Vec(repeating: 0.044715)
        var i = 0
        while i < n {
            let m = min(16, n - i)
            var x = Vec(repeating: 0), g = Vec(repeating: 0)
            if m == 16 { x = vload(pre + i); g = vload(d + i) } else { for j in 0..<m { x[j] = pre[i + j]; g[j] = d[i + j] } }
            let t = vtanh(k * (x + c * x * x * x))
            let dudx = k * (Vec(repeating: 1) + Vec(repeating: 3) * c * x * x)
            let grad = Vec(repeating: 0.5) * (Vec(repeating: 1) + t) + Vec(repeating: 0.5) * x * (Vec(repeating: 1) - t * t) * dudx
            let r = g * grad
            if m == 16 { vstore(r, d + i) } else { for j in 0..<m { d[i + j] = r[j] } }
            i += 16
        }
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
/// Accumulates dq[T, hd], dk[L, hd], dv[L, hd] (strided); dprobs[T, L] is scratch.
public func attentionBackward(dq: FloatPtr, ldq: Int, dk: FloatPtr, dv: FloatPtr, ldk: Int, dprobs: FloatPtr,
                              dout: ConstFloatPtr, ldo: Int, probs: ConstFloatPtr,
                              q: ConstFloatPtr, k: ConstFloatPtr, v: ConstFloatPtr,
                              T: Int, L: Int, past: Int, hd: Int, scale: Float) {
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let rows = i1 - i0
        let keys = min(L, past + i1)
        let P = probs + i0 * L, dP = dprobs + i0 * L
        // dV[keys] += Pᵀ · dO
        gemm(transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: P, lda: L,
             B: dout + i0 * ldo, ldb: ldo, beta: 1, C: dv, ldc: ldk)
        // dP = dO · Vᵀ
        gemm(transA: false, transB: true, M: rows, N: keys, K: hd, alpha: 1, A: dout + i0 * ldo, lda: ldo,
             B: v, ldb: ldk, beta: 0, C: dP, ldc: L)
        // dS = P ⊙ (dP − Σ_j P·dP) · scale
        for i in 0..<rows {
            let p = P + i * L, dp = dP + i * L
            var dot: Float = 0
            for j in 0..<keys { dot += p[j] * dp[j] }
            for j in 0..<keys { dp[j] = p[j] * (dp[j] - dot) * scale }
        }
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
    var total = 0.0
    for r in 0..<rows {
        let row = logits + r * V
        let t = Int(targets[r])
        if t < 0 || t >= V {
            row.update(repeating: 0, count: V)
            continue
        }
        var mx = -Float.infinity
        for i in 0..<V where row[i] > mx { mx = row[i] }
        let target = row[t]
        let m = Vec(repeating: mx)
        vmap(row, row, V) { vexp($0 - m) }
        var sum = 0.0
        for i in 0..<V { sum += Double(row[i]) }
        total += Double(mx) + Foundation.log(sum) - Double(target)
        let s = Vec(repeating: Float(Double(gradScale) / sum))
        vmap(row, row, V) { $0 * s }
        row[t] -= gradScale
    }
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
