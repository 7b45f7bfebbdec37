// Token and position embeddings, both directions.

/// out[B·T, C] = wte[ids[b,t], :] + wpe[pos[b,t], :], each row read
/// converted to F32 from the tables' dtype.
/// ids and positions must be in range (the model checks them).
package func embeddingForward(
    out: FloatPtr, ids: UnsafePointer<Int32>, positions: UnsafePointer<Int32>,
    wte: BaseMatrix, wpe: BaseMatrix, n: Int, C: Int
) {
    guard let wte = wte.f32, let wpe = wpe.f32 else {
        parallelChunks(n, minChunk: 16) { _, r in
            withPanelScratch(C) { p in
                for i in r {
                    let y = out + i * C
                    let t = Int(ids[i])
                    let q = Int(positions[i])
                    wte.dequantize(into: y, ldd: C, rows: t..<t + 1, cols: 0..<C)
                    wpe.dequantize(into: p, ldd: C, rows: q..<q + 1, cols: 0..<C)
                    for c in 0..<C { y[c] += p[c] }
                }
            }
        }
        return
    }
    parallelChunks(n, minChunk: 16) { _, r in
        for i in r {
            let t = wte + Int(ids[i]) * C
            let p = wpe + Int(positions[i]) * C
            let y = out + i * C
            for c in 0..<C { y[c] = t[c] + p[c] }
        }
    }
}

/// dwte[ids[i]] += dout[i]; dwpe[positions[i]] += dout[i]  (rows of C).
package func embeddingBackward(
    dwte: FloatPtr, dwpe: FloatPtr, dout: ConstFloatPtr,
    ids: UnsafePointer<Int32>, positions: UnsafePointer<Int32>, n: Int, C: Int
) {
    for i in 0..<n {
        let d = dout + i * C
        let t = dwte + Int(ids[i]) * C
        let p = dwpe + Int(positions[i]) * C
        for c in 0..<C { t[c] += d[c]; p[c] += d[c] }
    }
}
