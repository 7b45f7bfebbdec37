import CLoraSupport

// GPT-2's own dropouts in a training pass, as transformers' model.train()
// applies them: `transformer.drop` on the embeddings (embd_pdrop), each
// block's `attn.attn_dropout` on the attention weights (attn_pdrop) and
// `attn.resid_dropout` / `mlp.dropout` on the two projections' outputs
// (resid_pdrop). Inverted dropout: y = x ⊙ m, m = 0 with probability p,
// else 1/(1 − p). The backward is the same product, dx = dy ⊙ m, so one
// function serves both directions.
//
// Masks are not stored: every element's draw is a hash of its coordinates
// (counter-based, as LoRA dropout), so backward and a checkpointed
// recompute regenerate the forward's mask exactly, padding does not move
// it, and data-parallel ranks draw the rows one process would.

/// Multiplies x[0..<count] by the mask whose element i has index first + i
/// in the stream `key`: element i is dropped when
/// (SplitMix64's output function of key + (first + i)·φ, >> 40) / 2²⁴ < p, φ = 0x9E3779B97F4A7C15
/// (lb_dropout: vectorized where the CPU allows). out may alias x.
@inline(__always)
private func dropoutRun(
    out: FloatPtr, _ x: ConstFloatPtr, count: Int, key: UInt64, first: UInt64, p: Float, keep: Float
) {
    // 24-bit draws compared as integers: u < p ⇔ bits < ⌈p·2²⁴⌉ (p·2²⁴ is exact in Float).
    lb_dropout(out, x, count, key, first, UInt64((p * 16_777_216).rounded(.up)), keep)
}

/// The dropouts of one training pass (nil outside training).
struct ModelDropout {
    /// embd_pdrop, attn_pdrop, resid_pdrop, each in [0, 1).
    let embd: Float
    let attn: Float
    let resid: Float
    /// The pass's seed (a draw of the trainer's generator, shared with LoRA dropout's masks).
    let seed: UInt64
    /// Tokens per example in this pass, the block size masks are indexed by,
    /// and the index of the pass's first example in the global micro-batch.
    let T: Int
    let block: Int
    let rowOffset: Int

    /// The sites' streams: 0 the embeddings; in layer l, 3l + 1 the
    /// attention weights, 3l + 2 attention's output, 3l + 3 the MLP's.
    enum Site {
        case embedding
        case attentionWeights(layer: Int)
        case attentionOutput(layer: Int)
        case mlpOutput(layer: Int)

        var index: Int {
            switch self {
            case .embedding: return 0
            case .attentionWeights(let l): return 3 * l + 1
            case .attentionOutput(let l): return 3 * l + 2
            case .mlpOutput(let l): return 3 * l + 3
            }
        }
    }

    /// SplitMix64's output function of seed ^ (site + 1)·0xD1B54A32D192ED03
    /// (the generator's next() from that state minus its increment).
    func key(_ site: Site) -> UInt64 {
        var g = SplitMix64(seed: (seed ^ (UInt64(site.index + 1) &* 0xD1B5_4A32_D192_ED03)) &- 0x9E37_79B9_7F4A_7C15)
        return g.next()
    }

    static func keepFactor(_ p: Float) -> Float { 1 / (1 - p) }

    /// out[n, C] = x ⊙ mask for the embeddings or a projection's output
    /// (out may alias x): element c of token t of example b has index
    /// ((b + rowOffset)·block + t)·C + c.
    func apply(_ site: Site, out: FloatPtr, _ x: ConstFloatPtr, n: Int, C: Int) {
        let p: Float
        switch site {
        case .embedding: p = embd
        case .attentionOutput, .mlpOutput: p = resid
        case .attentionWeights: preconditionFailure("attention weights are dropped by AttentionDropout")
        }
        guard p > 0 else {
            if out != x { out.update(from: x, count: n * C) }
            return
        }
        let key = key(site)
        let keep = Self.keepFactor(p)
        parallelChunks(n, minChunk: max(1, elementwiseChunk / max(1, C))) { _, rows in
            for r in rows {
                let first = UInt64(((r / T + rowOffset) * block + r % T) * C)
                dropoutRun(out: out + r * C, x + r * C, count: C, key: key, first: first, p: p, keep: keep)
            }
        }
    }

    /// The attention weights' mask of head h of example b in `layer`, or nil when attn_pdrop is 0.
    func attention(layer: Int, b: Int, h: Int, H: Int) -> AttentionDropout? {
        guard attn > 0 else { return nil }
        return AttentionDropout(
            p: attn, keep: Self.keepFactor(attn), key: key(.attentionWeights(layer: layer)),
            first: UInt64(((b + rowOffset) * H + h) * block * block), block: block)
    }
}

/// One head's attention-weights dropout: weight j of query row i has index
/// first + i·block + j (example b + rowOffset, head h: first = ((b + rowOffset)·H + h)·block²).
package struct AttentionDropout {
    let p: Float
    let keep: Float
    let key: UInt64
    let first: UInt64
    let block: Int

    package init(p: Float, keep: Float, key: UInt64, first: UInt64, block: Int) {
        self.p = p; self.keep = keep; self.key = key; self.first = first; self.block = block
    }

    /// Row i's first `count` weights (the keys it sees), in place.
    @inline(__always)
    package func apply(row: FloatPtr, i: Int, count: Int) {
        dropoutRun(out: row, row, count: count, key: key, first: first + UInt64(i * block), p: p, keep: keep)
    }
}
