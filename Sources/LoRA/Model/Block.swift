import CLoraSupport

// The GPT-2 transformer, forward and backward side by side: one block
// (layerForward/layerBackward) and, for training, the whole stack from the
// embeddings to the final LayerNorm (trunkForward/trunkBackward). Forward is
// shared by inference (one set of scratch buffers for every layer, residual
// stream updated in place, K/V copied into a cache) and training (per-layer
// buffers kept for backward, K/V read straight from qkv).

/// Pointers for one block's forward pass. Buffers may alias where the
/// comment allows it (inference does; training does not).
struct LayerActs {
    /// Residual stream in [n, C].
    var input: FloatPtr
    var ln1: FloatPtr
    var ln1Mean: FloatPtr?
    var ln1Rstd: FloatPtr?
    /// [n, 3C]
    var qkv: FloatPtr
    /// Attention output before c_proj [n, C].
    var att: FloatPtr
    /// probsSlots scratch areas of [T, L] for the attention weights, one per attention worker.
    var probs: FloatPtr
    var probsSlots: Int
    /// Training: [B, H, T] log-sum-exp of each attention row, kept for backward.
    var lse: FloatPtr?
    /// input + attention projection [n, C] (may alias input).
    var res2: FloatPtr
    var ln2: FloatPtr
    var ln2Mean: FloatPtr?
    var ln2Rstd: FloatPtr?
    /// c_fc output before the activation [n, F].
    var fcPre: FloatPtr
    /// After the activation [n, F] (may alias fcPre).
    var fcAct: FloatPtr
    /// Block output [n, C] (may alias res2).
    var res3: FloatPtr
    /// Scratch [n, C].
    var proj: FloatPtr
}

/// Where attention reads keys and values.
enum KVPlacement {
    /// From qkv itself (training, no cache).
    case inline
    /// From a cache [B, H, capacity, hd] for this layer, after appending this call's K/V at `past`.
    case cache(KVLayer)
    /// The engine's pool: the call's n rows (B = 1, T = n) are consecutive
    /// runs of different sequences, each with its own cache slot in this
    /// layer's k, v [slots, H, capacity, hd] and its own past.
    case sequences(UnsafeBufferPointer<SequenceRows>, KVLayer)
}

/// One layer's key and value caches, [slots, H, capacity, hd] each, stored
/// as the model's KV cache dtype (f32, or bf16 rounded to nearest even).
struct KVLayer {
    let k: UnsafeMutableRawPointer
    let v: UnsafeMutableRawPointer
    let capacity: Int
    let dtype: WeightDType

    /// Stores `count` keys and values from k and v at element `at` of both caches.
    @inline(__always)
    func store(at: Int, k src: ConstFloatPtr, v vsrc: ConstFloatPtr, count: Int) {
        switch dtype {
        case .bf16:
            lb_f32_to_bf16_n((k + 2 * at).assumingMemoryBound(to: UInt16.self), src, count)
            lb_f32_to_bf16_n((v + 2 * at).assumingMemoryBound(to: UInt16.self), vsrc, count)
        case .f32:
            (k.assumingMemoryBound(to: Float.self) + at).update(from: src, count: count)
            (v.assumingMemoryBound(to: Float.self) + at).update(from: vsrc, count: count)
        case .f16, .q8_0:
            preconditionFailure("a KV cache is f32 or bf16 (Model.checkedKVCacheDType)")
        }
    }

    /// Attention of T query rows against the [L, hd] keys and values at element `at`.
    @inline(__always)
    func attention(
        at: Int, out: FloatPtr, ldo: Int, probs: FloatPtr, q: ConstFloatPtr, ldq: Int, T: Int, L: Int, past: Int, hd: Int,
        scale: Float, keyMask: ConstFloatPtr?
    ) {
        let bytes = dtype.weightBytes
        cachedAttentionForward(
            out: out, ldo: ldo, probs: probs, q: q, ldq: ldq, k: k + bytes * at, v: v + bytes * at, dtype: dtype, T: T, L: L,
            past: past, hd: hd, scale: scale, keyMask: keyMask)
    }
}

/// One sequence's rows in a batched call (see `KVPlacement.sequences`).
struct SequenceRows {
    /// First row in the call, and how many rows (new tokens).
    var start: Int
    var count: Int
    /// Positions already in the sequence's cache.
    var past: Int
    /// The sequence's cache slot.
    var slot: Int
}

/// What the training forward keeps for backward: each block's activations
/// and the final LayerNorm's output, mean and rstd [n, C], [n], [n].
struct TrunkActs {
    var layers: [LayerActs]
    var lnf, lnfMean, lnfRstd: FloatPtr
}

/// Gradient buffers of a block's backward for n = B·T rows.
struct LayerGrads {
    /// ∂L/∂(residual stream) [n, C]: the block output's on entry, its input's on exit.
    var dres: FloatPtr
    /// Scratch: [n, C], [n, C], [n, 3C], [n, F].
    var dln, datt, dqkv, dfc: FloatPtr
    /// Attention scratch, `attnSlots` areas of `attnSlotSize` floats (one per worker).
    var attnScratch: FloatPtr
    var attnSlots: Int
    var attnSlotSize: Int
    /// Full fine-tuning: where this block's weight gradients accumulate.
    var weights: LayerWeights?
    /// With GPT-2's dropouts (ModelDropout): scratch [n, C] for a
    /// projection's output gradient times its mask.
    var dmask: FloatPtr? = nil
}

extension Model {
    /// The attention scores' scale in layer l: 1/√head_dim (scale_attn_weights), / (l + 1) (scale_attn_by_inverse_layer_idx).
    func attentionScale(layer l: Int) -> Float {
        var scale: Float = config.scaleAttnWeights ? 1 / Float(config.headDim).squareRoot() : 1
        if config.scaleAttnByInverseLayerIdx { scale /= Float(l + 1) }
        return scale
    }

    /// One buffer of rows × max(a, b) floats for two inference activations that
    /// are never live at once in layerForward: LN's output and attention's
    /// (ln1 is read last by c_attn's products, before attention writes att;
    /// att last by c_proj's, before LN2 writes ln2), and qkv and the MLP's
    /// hidden rows (qkv is read last by attention, before c_fc writes them;
    /// they are read last by the MLP's c_proj, before the next c_attn).
    /// Inference only: training keeps every activation for backward.
    static func sharedPair(rows: Int, _ a: Int, _ b: Int) throws -> (FloatBlock, FloatBlock) {
        let block = try FloatBlock(count: rows * max(a, b))
        return (block, block)
    }

    /// One block: x → LN1 → c_attn → attention → c_proj → +x → LN2 → c_fc → act → c_proj → +.
    /// `dropout` (training with GPT-2's dropouts, K/V inline): on the
    /// attention weights and on both projections' outputs.
    func layerForward(
        _ l: Int, _ a: LayerActs, B: Int, T: Int, past: Int, kv: KVPlacement,
        keyMask: ((Int) -> ConstFloatPtr?)?, lora: LoRAContext, dropout: ModelDropout? = nil
    ) {
        let c = config
        let lw = weights.layers[l]
        let C = c.nEmbd
        let F = c.innerSize
        let n = B * T
        let eps = Float(c.layerNormEpsilon)

        lora.layerNorm(
            .ln1(layer: l), out: a.ln1, mean: a.ln1Mean, rstd: a.ln1Rstd, inp: a.input, weight: lw.ln1W, bias: lw.ln1B,
            rows: n, C: C, eps: eps)
        matmulForward(out: a.qkv, inp: a.ln1, weight: lw.attnW, bias: lw.attnB, M: n, K: C, N: 3 * C)
        lora.forward(layer: l, target: .attnCAttn, x: a.ln1, y: a.qkv, n: n)

        let scale = attentionScale(layer: l)
        if case .sequences(let runs, let cache) = kv {
            sequenceAttention(a, runs: runs, cache: cache, scale: scale)
        } else {
            batchAttention(a, B: B, T: T, past: past, kv: kv, keyMask: keyMask, scale: scale, dropout: dropout, layer: l)
        }
        matmulForward(out: a.proj, inp: a.att, weight: lw.attnProjW, bias: lw.attnProjB, M: n, K: C, N: C)
        lora.forward(layer: l, target: .attnCProj, x: a.att, y: a.proj, n: n)
        dropout?.apply(.attentionOutput(layer: l), out: a.proj, a.proj, n: n, C: C)
        addForward(out: a.res2, a: a.input, b: a.proj, n: n * C)

        lora.layerNorm(
            .ln2(layer: l), out: a.ln2, mean: a.ln2Mean, rstd: a.ln2Rstd, inp: a.res2, weight: lw.ln2W, bias: lw.ln2B,
            rows: n, C: C, eps: eps)
        matmulForward(out: a.fcPre, inp: a.ln2, weight: lw.fcW, bias: lw.fcB, M: n, K: C, N: F)
        lora.forward(layer: l, target: .mlpCFC, x: a.ln2, y: a.fcPre, n: n)
        activationForward(c.activation, out: a.fcAct, inp: a.fcPre, n: n * F)
        matmulForward(out: a.proj, inp: a.fcAct, weight: lw.mlpProjW, bias: lw.mlpProjB, M: n, K: F, N: C)
        lora.forward(layer: l, target: .mlpCProj, x: a.fcAct, y: a.proj, n: n)
        dropout?.apply(.mlpOutput(layer: l), out: a.proj, a.proj, n: n, C: C)
        addForward(out: a.res3, a: a.res2, b: a.proj, n: n * C)
    }

    /// Attention of B rows of T new tokens each, keys and values from qkv or the cache.
    private func batchAttention(
        _ a: LayerActs, B: Int, T: Int, past: Int, kv: KVPlacement,
        keyMask: ((Int) -> ConstFloatPtr?)?, scale: Float, dropout: ModelDropout?, layer: Int
    ) {
        let c = config
        let C = c.nEmbd
        let H = c.nHead
        let hd = c.headDim
        let L = past + T
        if case .cache(let cache) = kv {
            for b in 0..<B {
                for t in 0..<T {
                    let src = a.qkv + (b * T + t) * 3 * C
                    for h in 0..<H {
                        let dst = (b * H + h) * cache.capacity * hd + (past + t) * hd
                        cache.store(at: dst, k: src + C + h * hd, v: src + 2 * C + h * hd, count: hd)
                    }
                }
            }
        }
        // Heads run in parallel, each single-threaded.
        let slotSize = T * L
        parallelChunks(B * H, maxWorkers: a.probsSlots) { worker, heads in
            for bh in heads {
                let b = bh / H
                let h = bh % H
                let out = a.att + b * T * C + h * hd
                let probs = a.probs + worker * slotSize
                let q = a.qkv + b * T * 3 * C + h * hd
                switch kv {
                case .inline:
                    let base: FloatPtr = a.qkv + b * T * 3 * C
                    attentionForward(
                        out: out, ldo: C, probs: probs, q: q, ldq: 3 * C,
                        k: base + (C + h * hd), ldk: 3 * C, v: base + (2 * C + h * hd), ldv: 3 * C,
                        T: T, L: L, past: past, hd: hd, scale: scale, keyMask: keyMask?(b),
                        lse: a.lse.map { $0 + bh * T }, dropout: dropout?.attention(layer: layer, b: b, h: h, H: H))
                case .cache(let cache), .sequences(_, let cache):
                    cache.attention(
                        at: (b * H + h) * cache.capacity * hd, out: out, ldo: C, probs: probs, q: q, ldq: 3 * C,
                        T: T, L: L, past: past, hd: hd, scale: scale, keyMask: keyMask?(b))
                }
            }
        }
    }

    /// Attention of each sequence's new rows against its own cache slot,
    /// after appending their keys and values there. Heads of every sequence
    /// run in parallel; probs holds probsSlots areas of [max count, capacity].
    private func sequenceAttention(_ a: LayerActs, runs: UnsafeBufferPointer<SequenceRows>, cache: KVLayer, scale: Float) {
        let c = config
        let C = c.nEmbd
        let H = c.nHead
        let hd = c.headDim
        let capacity = cache.capacity
        var maxCount = 0
        for s in runs {
            maxCount = max(maxCount, s.count)
            for t in 0..<s.count {
                let src = a.qkv + (s.start + t) * 3 * C
                for h in 0..<H {
                    let dst = (s.slot * H + h) * capacity * hd + (s.past + t) * hd
                    cache.store(at: dst, k: src + C + h * hd, v: src + 2 * C + h * hd, count: hd)
                }
            }
        }
        let slotSize = maxCount * capacity
        parallelChunks(runs.count * H, maxWorkers: a.probsSlots) { worker, heads in
            for sh in heads {
                let s = runs[sh / H]
                let h = sh % H
                cache.attention(
                    at: (s.slot * H + h) * capacity * hd, out: a.att + s.start * C + h * hd, ldo: C,
                    probs: a.probs + worker * slotSize, q: a.qkv + s.start * 3 * C + h * hd, ldq: 3 * C,
                    T: s.count, L: s.past + s.count, past: s.past, hd: hd, scale: scale, keyMask: nil)
            }
        }
    }

    /// Backward through one block, the inverse of layerForward (its
    /// activations `a` as forward left them): g.dres holds ∂L/∂output on entry, ∂L/∂input on
    /// exit (unless `needInputGradient` is false: then only parameter gradients).
    func layerBackward(
        _ l: Int, _ a: LayerActs, _ g: LayerGrads, B: Int, T: Int, lora: LoRAContext, needInputGradient: Bool,
        dropout: ModelDropout? = nil
    ) {
        let c = config
        let lw = weights.layers[l]
        let gw = g.weights
        let dres = g.dres
        let dln = g.dln
        let datt = g.datt
        let dqkv = g.dqkv
        let dfc = g.dfc
        let C = c.nEmbd
        let F = c.innerSize
        let H = c.nHead
        let hd = c.headDim
        let n = B * T

        // The gradient a projection's output gets: dres, times its mask with dropout.
        func projectionGradient(_ site: ModelDropout.Site) -> ConstFloatPtr {
            guard let dropout, dropout.resid > 0 else { return UnsafePointer(dres) }
            guard let m = g.dmask else { preconditionFailure("model dropout without its gradient scratch") }
            dropout.apply(site, out: m, dres, n: n, C: C)
            return UnsafePointer(m)
        }

        // MLP projection. (DoRA branches scale the gradient the base product
        // gets: baseGradient; without DoRA it is dres itself.)
        var dproj = projectionGradient(.mlpOutput(layer: l))
        var dy = lora.baseGradient(layer: l, target: .mlpCProj, dy: dproj, n: n)
        matmulBackward(
            dinp: dfc, dweight: gw?.mlpProjW.f32, dbias: gw?.mlpProjB, dout: dy, inp: a.fcAct, weight: lw.mlpProjW, M: n, K: F, N: C,
            accumulate: false)
        lora.backward(layer: l, target: .mlpCProj, x: a.fcAct, dy: dproj, dx: dfc, n: n)
        activationBackward(c.activation, d: dfc, pre: a.fcPre, n: n * F)
        dy = lora.baseGradient(layer: l, target: .mlpCFC, dy: dfc, n: n)
        matmulBackward(
            dinp: dln, dweight: gw?.fcW.f32, dbias: gw?.fcB, dout: dy, inp: a.ln2, weight: lw.fcW, M: n, K: C, N: F, accumulate: false)
        lora.backward(layer: l, target: .mlpCFC, x: a.ln2, dy: dfc, dx: dln, n: n)
        let ln2 = lora.layerNorms[.ln2(layer: l)]
        layerNormBackward(
            dinp: dres, dweight: gw?.ln2W ?? ln2?.dWeight, dbias: gw?.ln2B ?? ln2?.dBias, dout: dln, inp: a.res2,
            weight: ln2?.weight ?? UnsafePointer(lw.ln2W), mean: a.ln2Mean!, rstd: a.ln2Rstd!, rows: n, C: C)

        // Attention projection and attention.
        dproj = projectionGradient(.attentionOutput(layer: l))
        dy = lora.baseGradient(layer: l, target: .attnCProj, dy: dproj, n: n)
        matmulBackward(
            dinp: datt, dweight: gw?.attnProjW.f32, dbias: gw?.attnProjB, dout: dy, inp: a.att, weight: lw.attnProjW, M: n, K: C, N: C,
            accumulate: false)
        lora.backward(layer: l, target: .attnCProj, x: a.att, dy: dproj, dx: datt, n: n)
        dqkv.update(repeating: 0, count: n * 3 * C)
        let scale = attentionScale(layer: l)
        // Heads in parallel: each writes its own columns of dqkv.
        let scratch = g.attnScratch
        let slotSize = g.attnSlotSize
        parallelChunks(B * H, maxWorkers: g.attnSlots) { worker, heads in
            for bh in heads {
                let b = bh / H
                let h = bh % H
                let base = b * T * 3 * C + h * hd
                attentionBackward(
                    dq: dqkv + base, ldq: 3 * C, dk: dqkv + base + C, dv: dqkv + base + 2 * C, ldk: 3 * C,
                    scratch: scratch + worker * slotSize, dout: datt + b * T * C + h * hd, ldo: C,
                    lse: a.lse! + bh * T,
                    q: a.qkv + base, k: a.qkv + base + C, v: a.qkv + base + 2 * C,
                    T: T, L: T, past: 0, hd: hd, scale: scale, keyMask: nil,
                    dropout: dropout?.attention(layer: l, b: b, h: h, H: H))
            }
        }
        dy = lora.baseGradient(layer: l, target: .attnCAttn, dy: dqkv, n: n)
        matmulBackward(
            dinp: needInputGradient ? dln : nil, dweight: gw?.attnW.f32, dbias: gw?.attnB, dout: dy, inp: a.ln1,
            weight: lw.attnW, M: n, K: C, N: 3 * C, accumulate: false)
        lora.backward(layer: l, target: .attnCAttn, x: a.ln1, dy: dqkv, dx: needInputGradient ? dln : nil, n: n)
        guard needInputGradient else { return }
        let ln1 = lora.layerNorms[.ln1(layer: l)]
        layerNormBackward(
            dinp: dres, dweight: gw?.ln1W ?? ln1?.dWeight, dbias: gw?.ln1B ?? ln1?.dBias, dout: dln, inp: a.input,
            weight: ln1?.weight ?? UnsafePointer(lw.ln1W), mean: a.ln1Mean!, rstd: a.ln1Rstd!, rows: n, C: C)
    }

    /// Training forward through the stack: embeddings, every block (K/V read
    /// from qkv), the final LayerNorm into acts.lnf (with its mean/rstd).
    /// Returns the final LayerNorm's input (the last block's output).
    func trunkForward(
        ids: [TokenID], positions: [Int32], _ acts: TrunkActs, B: Int, T: Int, lora: LoRAContext, dropout: ModelDropout? = nil
    ) -> ConstFloatPtr {
        let c = config
        let w = weights
        let n = B * T
        let C = c.nEmbd
        ids.withUnsafeBufferPointer { idp in
            positions.withUnsafeBufferPointer { pp in
                embeddingForward(
                    out: acts.layers[0].input, ids: idp.baseAddress!, positions: pp.baseAddress!,
                    wte: w.wte, wpe: w.wpe, n: n, C: C)
                lora.embeddingForward(ids: idp.baseAddress!, x: acts.layers[0].input, n: n)
            }
        }
        let x0 = acts.layers[0].input
        dropout?.apply(.embedding, out: x0, x0, n: n, C: C)
        for l in 0..<c.nLayer {
            layerForward(l, acts.layers[l], B: B, T: T, past: 0, kv: .inline, keyMask: nil, lora: lora, dropout: dropout)
        }
        let xFinal = c.nLayer > 0 ? acts.layers[c.nLayer - 1].res3 : acts.layers[0].input
        let lnf = lora.layerNorms[.lnf]
        layerNormForward(
            out: acts.lnf, mean: acts.lnfMean, rstd: acts.lnfRstd, inp: xFinal, weight: lnf?.weight ?? UnsafePointer(w.lnfW),
            bias: lnf?.bias ?? UnsafePointer(w.lnfB), rows: n, C: C, eps: Float(c.layerNormEpsilon))
        return UnsafePointer(xFinal)
    }

    /// Backward through the stack, the inverse of trunkForward: g.dln holds
    /// ∂L/∂(final LayerNorm output) on entry. Blocks run down to `lowest`
    /// (below it nothing needs a gradient); with `recompute` (gradient
    /// checkpointing) each block's forward runs again first. `full`: every
    /// weight's gradient accumulates there (full fine-tuning), embeddings included.
    func trunkBackward(
        ids: [TokenID], positions: [Int32], _ acts: TrunkActs, xFinal: ConstFloatPtr, _ g: LayerGrads,
        full: GPT2Weights?, lowest: Int, recompute: Bool, B: Int, T: Int, lora: LoRAContext, dropout: ModelDropout? = nil
    ) {
        let c = config
        let w = weights
        let n = B * T
        let C = c.nEmbd
        let lnf = lora.layerNorms[.lnf]
        layerNormBackward(
            dinp: g.dres, dweight: full?.lnfW ?? lnf?.dWeight, dbias: full?.lnfB ?? lnf?.dBias, dout: g.dln, inp: xFinal,
            weight: lnf?.weight ?? UnsafePointer(w.lnfW), mean: acts.lnfMean, rstd: acts.lnfRstd, rows: n, C: C)
        for l in stride(from: c.nLayer - 1, through: lowest, by: -1) {
            if recompute {
                layerForward(l, acts.layers[l], B: B, T: T, past: 0, kv: .inline, keyMask: nil, lora: lora, dropout: dropout)
            }
            var gl = g
            gl.weights = full?.layers[l]
            // A trained ln_1 in the lowest layer needs that layer's input gradient too.
            let trainsLN1 = lora.layerNorms[.ln1(layer: l)]?.dWeight != nil
            let trainsEmbedding = l == 0 && lora.training?.adapter.embedding != nil
            layerBackward(
                l, acts.layers[l], gl, B: B, T: T, lora: lora,
                needInputGradient: full != nil || l > lowest || trainsLN1 || trainsEmbedding, dropout: dropout)
        }
        // ∂L/∂(embeddings) = ∂L/∂(dropped embeddings) ⊙ mask.
        if lowest == 0, full != nil || lora.training?.adapter.embedding != nil {
            dropout?.apply(.embedding, out: g.dres, g.dres, n: n, C: C)
        }
        if lowest == 0, lora.training?.adapter.embedding != nil {
            ids.withUnsafeBufferPointer { lora.embeddingBackward(ids: $0.baseAddress!, dx: g.dres, n: n) }
        }
        if let full, let dwte = full.wte.f32, let dwpe = full.wpe.f32 {
            ids.withUnsafeBufferPointer { idp in
                positions.withUnsafeBufferPointer { pp in
                    embeddingBackward(
                        dwte: dwte, dwpe: dwpe, dout: g.dres, ids: idp.baseAddress!, positions: pp.baseAddress!, n: n, C: C)
                }
            }
        }
    }
}
