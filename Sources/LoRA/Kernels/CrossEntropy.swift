import CLoraSupport

// Softmax cross-entropy over the vocabulary, forward and backward fused
// (the loss and ∂L/∂logits come from the same softmax).

/// Next-token cross-entropy over a chunk of rows, fused with its gradient.
/// logits[rows, V] are replaced by ∂L/∂logits = gradScale · (softmax − onehot);
/// rows whose target is negative (ignored) get zeros. Returns the summed loss (nats).
package func crossEntropyForwardBackward(
    logits: FloatPtr, targets: UnsafePointer<Int32>, rows: Int, V: Int,
    gradScale: Float
) -> Double {
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
