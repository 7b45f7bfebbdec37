import Foundation

// Forward kernels over flat buffers. Shapes are in the comment above each.

/// out[rows, C] = LayerNorm(inp[rows, C]) · weight[C] + bias[C]
/// (biased variance, as torch.nn.LayerNorm). mean/rstd[rows] are saved for
/// backward when given.
public func layerNormForward(out: FloatPtr, mean: FloatPtr?, rstd: FloatPtr?,
                             inp: ConstFloatPtr, weight: ConstFloatPtr, bias: ConstFloatPtr,
                             rows: Int, C: Int, eps: Float) {
    for r in 0..<rows {
        let x = inp + r * C
        let y = out + r * C
        var sum: Float = 0
        for i in 0..<C { sum += x[i] }
        let m = sum / Float(C)
        var v: Float = 0
        for i in 0..<C { let d = x[i] - m; v += d * d }
        let s = 1 / (v / Float(C) + eps).squareRoot()
        for i in 0..<C { y[i] = (x[i] - m) * s * weight[i] + bias[i] }
        mean?[r] = m
        rstd?[r] = s
    }
}

/// out[n] = a[n] + b[n]   (out may alias a)
public func addForward(out: FloatPtr, a: ConstFloatPtr, b: ConstFloatPtr, n: Int) {
    for i in 0..<n { out[i] = a[i] + b[i] }
}

/// out[B·T, C] = wte[ids[b,t], :] + wpe[pos[b,t], :]
/// ids and positions must be in range (the model checks them).
public func embeddingForward(out: FloatPtr, ids: UnsafePointer<Int32>, positions: UnsafePointer<Int32>,
                             wte: ConstFloatPtr, wpe: ConstFloatPtr, n: Int, C: Int) {
    for i in 0..<n {
        let t = wte + Int(ids[i]) * C
        let p = wpe + Int(positions[i]) * C
        let y = out + i * C
        for c in 0..<C { y[c] = t[c] + p[c] }
    }
}

/// out[n] = act(inp[n])  (out may alias inp)
public func activationForward(_ act: Activation, out: FloatPtr, inp: ConstFloatPtr, n: Int) {
    switch act {
    case .geluNew, .geluPytorchTanh, .geluFast:
        // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³)
        let k2 = Vec(repeating: 2 * 0.7978845608028654)
        vmap(out, inp, n) { x in
            let u2 = k2 * (x + Vec(repeating: 0.044715) * x * x * x)
            return x * vsigmoid(u2)
        }
    case .gelu, .geluPython:
        for i in 0..<n { let x = inp[i]; out[i] = 0.5 * x * (1 + erf(x * 0.7071067811865476)) }
    case .quickGelu:
        vmap(out, inp, n) { x in x * vsigmoid(Vec(repeating: 1.702) * x) }
    case .relu:
        for i in 0..<n { out[i] = max(inp[i], 0) }
    case .silu, .swish:
        vmap(out, inp, n) { x in x * vsigmoid(x) }
    case .tanh:
        vmap(out, inp, n) { vtanh($0) }
    case .sigmoid:
        vmap(out, inp, n) { vsigmoid($0) }
    case .linear:
        if UnsafePointer(out) != inp { out.update(from: inp, count: n) }
    }
}

/// In place softmax over row[0..<n]; entries at and after `n` are untouched.
/// Returns false (and writes zeros) when every entry is -inf (a fully masked row).
@discardableResult
public func softmaxInPlace(_ row: FloatPtr, n: Int) -> Bool {
    var mx = -Float.infinity
    for i in 0..<n where row[i] > mx { mx = row[i] }
    if mx == -.infinity {
        row.update(repeating: 0, count: n)
        return false
    }
    let m = Vec(repeating: mx)
    vmap(row, row, n) { vexp($0 - m) }
    var sum: Float = 0
    for i in 0..<n { sum += row[i] }
    let inv = 1 / sum
    for i in 0..<n { row[i] *= inv }
    return true
}
