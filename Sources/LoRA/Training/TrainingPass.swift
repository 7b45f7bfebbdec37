import Foundation

/// What a training pass computes gradients for.
public enum TrainingTarget {
    /// One adapter's A and B (the base weights stay frozen, with no gradient buffers).
    case adapter(Adapter)
    /// Every weight of the model (full fine-tuning; the tied embedding counted once).
    case fullModel
    /// Nothing: forward passes only (evaluation).
    case none
}

/// Forward and backward through the whole network for batches of up to
/// [batch, block] tokens: activations kept for backward in buffers sized once,
/// gradients accumulated into `gradients`. Cross-entropy is computed in
/// chunks of rows so the [B·T, vocab] logits never exist at once.
final class TrainingPass {
    let model: Model
    let target: TrainingTarget
    let maxBatch: Int
    let block: Int
    let checkpointing: Bool
    /// Rows of logits per cross-entropy chunk.
    let chunkRows: Int

    /// Gradients, laid out like the trained parameters (adapter block or GPT2Layout).
    let gradients: FloatBlock
    /// Full fine-tuning: named views of `gradients`.
    let fullGrads: GPT2Weights?

    private let store: FloatBlock
    private var layerActs: [LayerActs] = []
    private var lnf, lnfMean, lnfRstd: FloatPtr
    private let logitsChunk: FloatBlock
    private let dres, dln, datt, dqkv, dfc: FloatPtr
    /// Attention scratch, one area per worker: the weights of a head in
    /// forward, recomputed blocks of them in backward.
    private let attnScratch: FloatBlock
    private let attnSlots: Int
    private let attnSlotSize: Int
    private let backwardStore: FloatBlock
    private var uOffsets: [Int: FloatPtr] = [:]
    private let uStore: FloatBlock
    private let loraScratch: FloatBlock   // [n, maxRank] for frozen adapters and du
    private let dropoutX: FloatBlock      // [n, maxIn]: x̃
    private let dropoutD: FloatBlock      // [n, maxIn]: keep factors / dx̃
    /// Seed of the dropout masks of the current pass.
    var dropoutSeed: UInt64 = 0

    init(model: Model, target: TrainingTarget, batch: Int, block: Int, checkpointing: Bool) throws {
        let c = model.config
        guard batch >= 1, block >= 2 else { throw LoraError.invalidArgument("batch must be >= 1 and block size >= 2") }
        guard block <= c.nPositions else {
            throw LoraError.invalidArgument("block size \(block) exceeds n_positions (\(c.nPositions))")
        }
        self.model = model
        self.target = target
        self.maxBatch = batch
        self.block = block
        self.checkpointing = checkpointing
        // The size check runs in floating point first: absurd batch × block
        // values must give an error, not an integer overflow.
        do {
            let nd = Double(batch) * Double(block), Cd = Double(c.nEmbd), Fd = Double(c.innerSize)
            let perLayer = nd * (8 * Cd + 2 * Fd + 4) + Double(batch) * Double(c.nHead) * Double(block)
            let layers = checkpointing ? Double(c.nLayer + 1) * nd * Cd + perLayer : Double(c.nLayer) * perLayer + nd * Cd
            let bytes = 4 * (layers + nd * (10 * Cd + Fd) + 16 * Double(block) * Double(block))
            guard bytes <= Double(FloatBlock.physicalMemory) else {
                throw LoraError.invalidArgument("batch \(batch) × block \(block) needs about \(Int(bytes / 1073741824)) GiB of activations, more than the machine's \(FloatBlock.physicalMemory >> 30) GiB; lower batch_size or block_size, or use gradient checkpointing")
            }
        }
        let n = batch * block, C = c.nEmbd, F = c.innerSize, H = c.nHead
        // 256 rows per chunk (51 MB of logits for GPT-2): fewer rows make each
        // product re-pack the whole [vocab, n_embd] head for little work.
        self.chunkRows = max(1, min(n, 256))

        switch target {
        case .adapter(let a):
            gradients = try FloatBlock(count: a.params.count)
            fullGrads = nil
        case .fullModel:
            let g = try GPT2Weights(config: c)
            fullGrads = g
            gradients = g.block
        case .none:
            gradients = try FloatBlock(count: 0)
            fullGrads = nil
        }

        // Per-layer activations: ln1(+2 stats) qkv att lse res2 ln2(+2) fcPre fcAct res3.
        // Attention weights are not kept: backward recomputes them from lse [B, H, T].
        let perLayerFull = n * C + 2 * n + 3 * n * C + n * C + batch * H * block + n * C + n * C + 2 * n + 2 * n * F + n * C
        let stored = checkpointing ? (c.nLayer + 1) * n * C + perLayerFull : n * C + c.nLayer * perLayerFull
        store = try FloatBlock(count: stored + n * C /*proj*/ + n * C + 2 * n /*lnf*/)
        let slots = max(1, min(computeThreads, 16)), slotSize = max(block * block, attentionBackwardScratch(T: block, L: block))
        let scratch = try FloatBlock(count: slots * slotSize)
        attnSlots = slots; attnSlotSize = slotSize; attnScratch = scratch
        var p = store.base
        func take(_ k: Int) -> FloatPtr { defer { p += k }; return p }
        let proj = take(n * C)
        lnf = take(n * C); lnfMean = take(n); lnfRstd = take(n)
        func layerSet(input: FloatPtr, res3: FloatPtr) -> LayerActs {
            let ln1 = take(n * C), m1 = take(n), r1 = take(n), qkv = take(3 * n * C), att = take(n * C)
            let lse = take(batch * H * block), res2 = take(n * C), ln2 = take(n * C), m2 = take(n), r2 = take(n)
            let fcPre = take(n * F), fcAct = take(n * F)
            return LayerActs(input: input, ln1: ln1, ln1Mean: m1, ln1Rstd: r1, qkv: qkv, att: att, probs: scratch.base,
                             probsSlots: slots, lse: lse, res2: res2, ln2: ln2, ln2Mean: m2, ln2Rstd: r2,
                             fcPre: fcPre, fcAct: fcAct, res3: res3, proj: proj)
        }
        if checkpointing {
            let inputs = (0...c.nLayer).map { _ in take(n * C) }
            let shared = layerSet(input: inputs[0], res3: inputs[0])
            layerActs = (0..<c.nLayer).map { l in
                var a = shared
                a.input = inputs[l]
                a.res3 = inputs[l + 1]
                return a
            }
        } else {
            var input = take(n * C)
            for _ in 0..<c.nLayer {
                let res3 = take(n * C)
                layerActs.append(layerSet(input: input, res3: res3))
                input = res3
            }
        }
        logitsChunk = try FloatBlock(count: chunkRows * c.vocabSize)
        backwardStore = try FloatBlock(count: 3 * n * C + 3 * n * C + n * F)
        var q = backwardStore.base
        func takeB(_ k: Int) -> FloatPtr { defer { q += k }; return q }
        dres = takeB(n * C); dln = takeB(n * C); datt = takeB(n * C); dqkv = takeB(3 * n * C); dfc = takeB(n * F)

        // LoRA: u = x̃·Aᵀ kept per trainable slot; scratch for the rest.
        var uCount = 0, maxRank = model.maxActiveRank, maxIn = 0
        if case .adapter(let a) = target {
            for s in a.slots { uCount += n * s.r; maxRank = max(maxRank, s.r); maxIn = max(maxIn, s.inFeatures) }
        }
        uStore = try FloatBlock(count: uCount)
        if case .adapter(let a) = target {
            var u = uStore.base
            for (i, s) in a.slots.enumerated() { uOffsets[i] = u; u += n * s.r }
        }
        loraScratch = try FloatBlock(count: n * maxRank)
        let dropoutCount = (target.adapterDropout > 0) ? n * maxIn : 0
        dropoutX = try FloatBlock(count: dropoutCount)
        dropoutD = try FloatBlock(count: dropoutCount)
    }

    var trainableAdapter: Adapter? { if case .adapter(let a) = target { return a } else { return nil } }

    /// Keep factors (0 or 1/(1−p)) of one slot's dropout mask, regenerated identically in backward.
    private func dropoutFactors(_ slotIndex: Int, count: Int, p: Float) -> FloatPtr {
        var rng = SplitMix64(seed: dropoutSeed ^ (UInt64(slotIndex + 1) &* 0x9E3779B97F4A7C15))
        let f = dropoutD.base, keep = 1 / (1 - p)
        for i in 0..<count { f[i] = rng.nextFloat() < p ? 0 : keep }
        return f
    }

    private func slotIndex(_ s: LoraSlot) -> Int { trainableAdapter?.slotIndex[s.layer * 4 + s.target.rawValue] ?? 0 }

    private func loraContext() -> LoRAContext {
        var ctx = LoRAContext(active: model.activeLoRA, scratch: loraScratch.base, saveU: nil, dropout: nil, trainable: trainableAdapter)
        if let a = trainableAdapter {
            if !ctx.active.contains(where: { $0.adapter === a }) { ctx.active.append(ActiveLoRA(adapter: a, scale: 1)) }
            ctx.saveU = { [unowned self] s in self.uOffsets[self.slotIndex(s)] }
            let p = Float(a.config.loraDropout)
            if p > 0 {
                ctx.dropout = { [unowned self] s, x, n in
                    let count = n * s.inFeatures
                    let f = self.dropoutFactors(self.slotIndex(s), count: count, p: p)
                    let xt = self.dropoutX.base
                    for i in 0..<count { xt[i] = x[i] * f[i] }
                    return UnsafePointer(xt)
                }
            }
        }
        return ctx
    }

    /// Runs forward (and backward unless `gradScale` is nil) for ids [B, T]
    /// with next-token targets [B, T] (negative: ignored). Gradients are added
    /// to `gradients` scaled by gradScale. Returns the summed loss and the
    /// number of counted targets.
    func run(ids: [TokenID], targets: [Int32], B: Int, T: Int, gradScale: Float?) throws -> (loss: Double, tokens: Int) {
        guard B >= 1, B <= maxBatch, T >= 1, T <= block, ids.count == B * T, targets.count == B * T else {
            throw LoraError.invalidArgument("batch [\(B), \(T)] does not fit the trainer's [\(maxBatch), \(block)]")
        }
        try ids.withUnsafeBufferPointer { try model.checkTokens($0) }
        let c = model.config, w = model.weights
        let n = B * T, C = c.nEmbd, V = c.vocabSize
        let eps = Float(c.layerNormEpsilon)
        let positions = (0..<n).map { Int32($0 % T) }
        let lora = loraContext()
        // Probabilities per (b, h) are [T, T]: re-stride the per-layer views for this T.
        ids.withUnsafeBufferPointer { idp in
            positions.withUnsafeBufferPointer { pp in
                embeddingForward(out: layerActs[0].input, ids: idp.baseAddress!, positions: pp.baseAddress!,
                                 wte: w.wte, wpe: w.wpe, n: n, C: C)
            }
        }
        for l in 0..<c.nLayer {
            model.layerForward(l, layerActs[l], B: B, T: T, past: 0, kv: .inline, keyMask: nil, lora: lora)
        }
        let last = layerActs[c.nLayer - 1].res3
        let xFinal = c.nLayer > 0 ? last : layerActs[0].input
        layerNormForward(out: lnf, mean: lnfMean, rstd: lnfRstd, inp: xFinal, weight: w.lnfW, bias: w.lnfB, rows: n, C: C, eps: eps)

        let count = targets.reduce(0) { $0 + ($1 >= 0 && Int($1) < V ? 1 : 0) }
        for t in targets where t >= V { throw LoraError.invalidArgument("label \(t) is out of range (0 to \(V - 1))") }
        let backward = gradScale != nil
        if backward, case .none = target { throw LoraError.invalidArgument("this pass was built for evaluation only") }
        if backward { dres.update(repeating: 0, count: n * C) }
        var loss = 0.0
        try targets.withUnsafeBufferPointer { tp in
            guard let tbase = tp.baseAddress else { return }
            var r0 = 0
            while r0 < n {
                let rows = min(chunkRows, n - r0)
                let chunk = logitsChunk.base
                gemm(transA: false, transB: true, M: rows, N: V, K: C, alpha: 1, A: lnf + r0 * C, lda: C,
                     B: w.lmHead, ldb: C, beta: 0, C: chunk, ldc: V)
                let partial = crossEntropyForwardBackward(logits: chunk, targets: tbase + r0, rows: rows, V: V, gradScale: gradScale ?? 0)
                guard partial.isFinite else { throw LoraError.numerical("loss is not finite") }
                loss += partial
                if backward {
                    // dlnf = dlogits · W_head (into dln), dW_head += dlogitsᵀ · lnf
                    gemm(transA: false, transB: false, M: rows, N: C, K: V, alpha: 1, A: chunk, lda: V,
                         B: w.lmHead, ldb: C, beta: 0, C: dln + r0 * C, ldc: C)
                    if let g = fullGrads {
                        gemm(transA: true, transB: false, M: V, N: C, K: rows, alpha: 1, A: chunk, lda: V,
                             B: lnf + r0 * C, ldb: C, beta: 1, C: g.lmHead, ldc: C)
                    }
                }
                r0 += rows
            }
        }
        guard backward else { return (loss, count) }

        let g = fullGrads
        layerNormBackward(dinp: dres, dweight: g?.lnfW, dbias: g?.lnfB, dout: dln, inp: xFinal, weight: w.lnfW,
                          mean: lnfMean, rstd: lnfRstd, rows: n, C: C)
        // LoRA: nothing below the lowest adapted layer needs a gradient, nor
        // does that layer's input (the embeddings are frozen).
        let lowest = trainableAdapter.map { a in a.slots.map(\.layer).min() ?? c.nLayer } ?? 0
        for l in stride(from: c.nLayer - 1, through: lowest, by: -1) {
            if checkpointing {
                model.layerForward(l, layerActs[l], B: B, T: T, past: 0, kv: .inline, keyMask: nil, lora: lora)
            }
            layerBackward(l, layerActs[l], B: B, T: T, lora: lora, needInputGradient: g != nil || l > lowest)
        }
        if let g {
            ids.withUnsafeBufferPointer { idp in
                positions.withUnsafeBufferPointer { pp in
                    embeddingBackward(dwte: g.wte, dwpe: g.wpe, dout: dres, ids: idp.baseAddress!, positions: pp.baseAddress!, n: n, C: C)
                }
            }
        }
        return (loss, count)
    }

    /// Backward through one block: dres holds ∂L/∂output on entry, ∂L/∂input on
    /// exit (unless `needInputGradient` is false: then only parameter gradients).
    private func layerBackward(_ l: Int, _ a: LayerActs, B: Int, T: Int, lora: LoRAContext, needInputGradient: Bool) {
        let c = model.config
        let lw = model.weights.layers[l]
        let gw = fullGrads?.layers[l]
        let C = c.nEmbd, F = c.innerSize, H = c.nHead, hd = c.headDim
        let n = B * T

        // MLP projection.
        matmulBackward(dinp: dfc, dweight: gw?.mlpProjW, dbias: gw?.mlpProjB, dout: dres, inp: a.fcAct, weight: lw.mlpProjW, M: n, K: F, N: C, accumulate: false)
        loraBackward(lora, layer: l, target: .mlpCProj, x: a.fcAct, dy: dres, dx: dfc, n: n)
        activationBackward(c.activation, d: dfc, pre: a.fcPre, n: n * F)
        matmulBackward(dinp: dln, dweight: gw?.fcW, dbias: gw?.fcB, dout: dfc, inp: a.ln2, weight: lw.fcW, M: n, K: C, N: F, accumulate: false)
        loraBackward(lora, layer: l, target: .mlpCFC, x: a.ln2, dy: dfc, dx: dln, n: n)
        layerNormBackward(dinp: dres, dweight: gw?.ln2W, dbias: gw?.ln2B, dout: dln, inp: a.res2, weight: lw.ln2W,
                          mean: a.ln2Mean!, rstd: a.ln2Rstd!, rows: n, C: C)

        // Attention projection and attention.
        matmulBackward(dinp: datt, dweight: gw?.attnProjW, dbias: gw?.attnProjB, dout: dres, inp: a.att, weight: lw.attnProjW, M: n, K: C, N: C, accumulate: false)
        loraBackward(lora, layer: l, target: .attnCProj, x: a.att, dy: dres, dx: datt, n: n)
        dqkv.update(repeating: 0, count: n * 3 * C)
        var scale: Float = c.scaleAttnWeights ? 1 / Float(hd).squareRoot() : 1
        if c.scaleAttnByInverseLayerIdx { scale /= Float(l + 1) }
        // Heads in parallel: each writes its own columns of dqkv.
        let scratch = attnScratch.base, slotSize = attnSlotSize
        parallelChunks(B * H, maxWorkers: attnSlots) { worker, heads in
            for bh in heads {
                let b = bh / H, h = bh % H
                let base = b * T * 3 * C + h * hd
                attentionBackward(dq: dqkv + base, ldq: 3 * C, dk: dqkv + base + C, dv: dqkv + base + 2 * C, ldk: 3 * C,
                                  scratch: scratch + worker * slotSize, dout: datt + b * T * C + h * hd, ldo: C,
                                  lse: a.lse! + bh * T,
                                  q: a.qkv + base, k: a.qkv + base + C, v: a.qkv + base + 2 * C,
                                  T: T, L: T, past: 0, hd: hd, scale: scale, keyMask: nil)
            }
        }
        matmulBackward(dinp: needInputGradient ? dln : nil, dweight: gw?.attnW, dbias: gw?.attnB, dout: dqkv, inp: a.ln1,
                       weight: lw.attnW, M: n, K: C, N: 3 * C, accumulate: false)
        loraBackward(lora, layer: l, target: .attnCAttn, x: a.ln1, dy: dqkv, dx: needInputGradient ? dln : nil, n: n)
        guard needInputGradient else { return }
        layerNormBackward(dinp: dres, dweight: gw?.ln1W, dbias: gw?.ln1B, dout: dln, inp: a.input, weight: lw.ln1W,
                          mean: a.ln1Mean!, rstd: a.ln1Rstd!, rows: n, C: C)
    }

    /// Backward through the LoRA branches of one module: dx += ∂L/∂x, and the
    /// trainable adapter's dA, dB accumulate into `gradients`.
    /// dx nil: the input gradient is not needed.
    private func loraBackward(_ lora: LoRAContext, layer: Int, target: LoraTarget, x: ConstFloatPtr, dy: ConstFloatPtr, dx: FloatPtr?, n: Int) {
        for act in lora.active {
            let adapter = act.adapter
            guard let s = adapter.slot(layer: layer, target: target) else { continue }
            if dx == nil && adapter !== trainableAdapter { continue }
            let scale = act.scale * s.scaling
            let du = loraScratch.base
            // du = s · dy · B
            gemm(transA: false, transB: false, M: n, N: s.r, K: s.outFeatures, alpha: scale, A: dy, lda: s.outFeatures,
                 B: adapter.B(s), ldb: s.r, beta: 0, C: du, ldc: s.r)
            guard adapter === trainableAdapter else {
                if let dx {
                    gemm(transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
                         B: adapter.A(s), ldb: s.inFeatures, beta: 1, C: dx, ldc: s.inFeatures)
                }
                continue
            }
            let idx = slotIndex(s)
            guard let u = uOffsets[idx] else { continue }
            let gA = gradients.base + s.offsetA, gB = gradients.base + s.offsetB
            // dB += s · dyᵀ · u
            gemm(transA: true, transB: false, M: s.outFeatures, N: s.r, K: n, alpha: scale, A: dy, lda: s.outFeatures,
                 B: u, ldb: s.r, beta: 1, C: gB, ldc: s.r)
            let p = Float(adapter.config.loraDropout)
            if p > 0 {
                let count = n * s.inFeatures
                let f = dropoutFactors(idx, count: count, p: p)
                let xt = dropoutX.base
                for i in 0..<count { xt[i] = x[i] * f[i] }
                gemm(transA: true, transB: false, M: s.r, N: s.inFeatures, K: n, alpha: 1, A: du, lda: s.r,
                     B: xt, ldb: s.inFeatures, beta: 1, C: gA, ldc: s.inFeatures)
                // dx += (du · A) ⊙ f   (x̃ scratch reused for du·A)
                if let dx {
                    gemm(transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
                         B: adapter.A(s), ldb: s.inFeatures, beta: 0, C: xt, ldc: s.inFeatures)
                    for i in 0..<count { dx[i] += xt[i] * f[i] }
                }
            } else {
                gemm(transA: true, transB: false, M: s.r, N: s.inFeatures, K: n, alpha: 1, A: du, lda: s.r,
                     B: x, ldb: s.inFeatures, beta: 1, C: gA, ldc: s.inFeatures)
                if let dx {
                    gemm(transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
                         B: adapter.A(s), ldb: s.inFeatures, beta: 1, C: dx, ldc: s.inFeatures)
                }
            }
        }
    }
}

extension TrainingTarget {
    var adapterDropout: Double { if case .adapter(let a) = self { return a.config.loraDropout } else { return 0 } }
}
