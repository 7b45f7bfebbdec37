import CLoraSupport
import Foundation

// Forward kernels over flat buffers. Shapes are in the comment above each.

/// out[rows, C] = LayerNorm(inp[rows, C]) · weight[C] + bias[C]
/// (biased variance, as torch.nn.LayerNorm). mean/rstd[rows] are saved for
/// backward when given.
public func layerNormForward(out: FloatPtr, mean: FloatPtr?, rstd: FloatPtr?,
                             inp: ConstFloatPtr, weight: ConstFloatPtr, bias: ConstFloatPtr,
                             rows: Int, C: Int, eps: Float) {
    parallelChunks(rows, minChunk: max(1, 8192 / max(C, 1))) { _, range in
        lb_layernorm_forward(out + range.lowerBound * C, mean.map { $0 + range.lowerBound }, rstd.map { $0 + range.lowerBound },
                             inp + range.lowerBound * C, weight, bias, range.count, Int32(C), eps)
    }
}

/// out[n] = a[n] + b[n]   (out may alias a)
public func addForward(out: FloatPtr, a: ConstFloatPtr, b: ConstFloatPtr, n: Int) {
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        lb_add(out + r.lowerBound, a + r.lowerBound, b + r.lowerBound, r.count)
    }
}

/// Element-wise kernels split into chunks of at least this many entries.
let elementwiseChunk = 1 << 15

/// out[B·T, C] = wte[ids[b,t], :] + wpe[pos[b,t], :]
/// ids and positions must be in range (the model checks them).
public func embeddingForward(out: FloatPtr, ids: UnsafePointer<Int32>, positions: UnsafePointer<Int32>,
                             wte: ConstFloatPtr, wpe: ConstFloatPtr, n: Int, C: Int) {
    parallelChunks(n, minChunk: 16) { _, r in
        for i in r {
            let t = wte + Int(ids[i]) * C
            let p = wpe + Int(positions[i]) * C
            let y = out + i * C
            for c in 0..<C { y[c] = t[c] + p[c] }
        }
    }
}

/// out[n] = act(inp[n])  (out may alias inp)
public func activationForward(_ act: Activation, out: FloatPtr, inp: ConstFloatPtr, n: Int) {
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        activationForwardSerial(act, out: out + r.lowerBound, inp: inp + r.lowerBound, n: r.count)
    }
}

func activationForwardSerial(_ act: Activation, out: FloatPtr, inp: ConstFloatPtr, n: Int) {
    switch act {
    case .geluNew, .geluPytorchTanh, .geluFast:
        // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³)
        lb_gelu_tanh_forward(out, inp, n)
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
