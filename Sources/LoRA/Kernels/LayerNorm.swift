import CLoraSupport

// LayerNorm over rows of C (biased variance, as torch.nn.LayerNorm), both
// directions. The row loops are C kernels (CLoraSupport).

/// out[rows, C] = LayerNorm(inp[rows, C]) · weight[C] + bias[C]
/// (biased variance, as torch.nn.LayerNorm). mean/rstd[rows] are saved for
/// backward when given.
package func layerNormForward(
    out: FloatPtr, mean: FloatPtr?, rstd: FloatPtr?,
    inp: ConstFloatPtr, weight: ConstFloatPtr, bias: ConstFloatPtr,
    rows: Int, C: Int, eps: Float
) {
    parallelChunks(rows, minChunk: max(1, 8192 / max(C, 1))) { _, range in
        lb_layernorm_forward(
            out + range.lowerBound * C, mean.map { $0 + range.lowerBound }, rstd.map { $0 + range.lowerBound },
            inp + range.lowerBound * C, weight, bias, range.count, Int32(C), eps)
    }
}

/// LayerNorm backward (rows of C): dinp += ∂L/∂x; dweight, dbias += (when given).
package func layerNormBackward(
    dinp: FloatPtr, dweight: FloatPtr?, dbias: FloatPtr?,
    dout: ConstFloatPtr, inp: ConstFloatPtr, weight: ConstFloatPtr,
    mean: ConstFloatPtr, rstd: ConstFloatPtr, rows: Int, C: Int
) {
    parallelChunks(rows, minChunk: max(1, 8192 / max(C, 1))) { _, range in
        let r0 = range.lowerBound
        lb_layernorm_backward_input(dinp + r0 * C, dout + r0 * C, inp + r0 * C, weight, mean + r0, rstd + r0, range.count, Int32(C))
    }
    // Parameter gradients: sums over rows, split by columns (same order as one thread).
    guard let dweight, let dbias else { return }
    parallelChunks(C, minChunk: 64, align: 16) { _, cols in
        for r in 0..<rows {
            let dy = dout + r * C
            let x = inp + r * C
            let m = mean[r]
            let s = rstd[r]
            for i in cols {
                dweight[i] += dy[i] * (x[i] - m) * s
                dbias[i] += dy[i]
            }
        }
    }
}
