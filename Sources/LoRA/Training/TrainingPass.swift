import Foundation

/// What a training pass computes gradients for.
package enum TrainingTarget {
    /// One adapter's A and B (the base weights stay frozen, with no gradient buffers).
    case adapter(Adapter)
    /// Every weight of the model (full fine-tuning; the tied embedding counted once).
    case fullModel
    /// Nothing: forward passes only (evaluation).
    case none
}

/// The buffers of a training pass for batches of up to [batch, block] tokens
/// (activations kept for backward, sized once; gradients) and its loss:
/// Model.trunkForward/trunkBackward (Model/Block.swift) run the network,
/// this file computes the LM head and cross-entropy in chunks of rows so
/// the [B·T, vocab] logits never exist at once.
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
    /// u [n, r] of each slot of the trained adapter.
    private var uPointers: [FloatPtr] = []
    private let uStore: FloatBlock
    private var loraScratch: FloatBlock  // [n, maxRank] for frozen adapters and du (grows with the attached ranks)
    /// DoRA: v [n, out] of each slot of the trained adapter (empty without DoRA).
    private var vPointers: [FloatPtr] = []
    private let vStore: FloatBlock
    /// DoRA branches' scratch (LoRAContext.doraScratch; grows with the attached adapters).
    private var doraScratch: FloatBlock
    /// Rows the pass holds (batch × block).
    private let maxRows: Int
    private let dropoutX: FloatBlock  // [n, maxIn]: x̃
    private let dropoutD: FloatBlock  // [n, maxIn]: keep factors / dx̃
    /// Seed of the dropout masks of the current pass.
    var dropoutSeed: UInt64 = 0
    /// Index of this pass's first example in the global micro-batch (data-parallel ranks; 0 in one process).
    var dropoutRowOffset = 0
    /// The sequence length of the current pass (dropout masks are indexed by block position).
    private var currentT = 0
    /// GPT-2's dropouts in passes with a backward (TrainerParams.modelDropout).
    let modelDropout: Bool
    /// With modelDropout: [n, C], a projection's output gradient times its mask.
    private let dmask: FloatBlock

    init(model: Model, target: TrainingTarget, batch: Int, block: Int, checkpointing: Bool, modelDropout: Bool = false) throws {
        let c = model.config
        guard batch >= 1, block >= 2 else { throw LoRAError.invalidArgument("batch must be >= 1 and block size >= 2") }
        guard block <= c.nPositions else {
            throw LoRAError.invalidArgument("block size \(block) exceeds n_positions (\(c.nPositions))")
        }
        self.model = model
        self.target = target
        self.maxBatch = batch
        self.block = block
        self.checkpointing = checkpointing
        self.modelDropout = modelDropout
        // The size check runs in floating point first: absurd batch × block
        // values must give an error, not an integer overflow.
        do {
            let nd = Double(batch) * Double(block)
            let Cd = Double(c.nEmbd)
            let Fd = Double(c.innerSize)
            let perLayer = nd * (8 * Cd + 2 * Fd + 4) + Double(batch) * Double(c.nHead) * Double(block)
            let layers = checkpointing ? Double(c.nLayer + 1) * nd * Cd + perLayer : Double(c.nLayer) * perLayer + nd * Cd
            let bytes = 4 * (layers + nd * ((modelDropout ? 11 : 10) * Cd + Fd) + 16 * Double(block) * Double(block))
            guard bytes <= Double(FloatBlock.physicalMemory) else {
                throw LoRAError.invalidArgument(
                    "batch \(batch) × block \(block) needs about \(Int(bytes / 1_073_741_824)) GiB of activations, more than the machine's \(FloatBlock.physicalMemory >> 30) GiB; lower batch_size or block_size, or use gradient checkpointing"
                )
            }
        }
        let n = batch * block
        let C = c.nEmbd
        let F = c.innerSize
        let H = c.nHead
        // 512 rows per chunk (103 MB of logits for GPT-2): fewer rows make each
        // product re-pack the whole [vocab, n_embd] head for little work.
        // sgemm on the head's two shapes, 2 threads (Intel Emerald Rapids):
        // 262/277 GFLOP/s at 256 rows, 284/291 at 512, 298/300 at 1024;
        // `lora bench train` 4 × 256: 503 tok/s (median of 6) at 256 rows,
        // 516 at 512 (peak RSS +48 MB), 506–521 at 1024 (+150 MB).
        self.chunkRows = max(1, min(n, 512))

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
        let slots = max(1, min(computeThreads, 16))
        let slotSize = max(block * block, attentionBackwardScratch(T: block, L: block, hd: c.headDim))
        let scratch = try FloatBlock(count: slots * slotSize)
        attnSlots = slots; attnSlotSize = slotSize; attnScratch = scratch
        var p = store.base
        func take(_ k: Int) -> FloatPtr { defer { p += k }; return p }
        let proj = take(n * C)
        lnf = take(n * C); lnfMean = take(n); lnfRstd = take(n)
        func layerSet(input: FloatPtr, res3: FloatPtr) -> LayerActs {
            let ln1 = take(n * C)
            let m1 = take(n)
            let r1 = take(n)
            let qkv = take(3 * n * C)
            let att = take(n * C)
            let lse = take(batch * H * block)
            let res2 = take(n * C)
            let ln2 = take(n * C)
            let m2 = take(n)
            let r2 = take(n)
            let fcPre = take(n * F)
            let fcAct = take(n * F)
            return LayerActs(
                input: input, ln1: ln1, ln1Mean: m1, ln1Rstd: r1, qkv: qkv, att: att, probs: scratch.base,
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
        var uCount = 0
        var maxRank = model.maxActiveRank
        var maxIn = 0
        if case .adapter(let a) = target {
            for s in a.slots { uCount += n * s.r; maxIn = max(maxIn, s.inFeatures) }
            maxRank = max(maxRank, a.maxRank)
        }
        uStore = try FloatBlock(count: uCount)
        if case .adapter(let a) = target {
            var u = uStore.base
            for s in a.slots { uPointers.append(u); u += n * s.r }
        }
        loraScratch = try FloatBlock(count: n * maxRank)
        var vCount = 0
        if case .adapter(let a) = target, a.config.useDoRA { vCount = a.slots.reduce(0) { $0 + n * $1.outFeatures } }
        vStore = try FloatBlock(count: vCount)
        if vCount > 0, case .adapter(let a) = target {
            var v = vStore.base
            for s in a.slots { vPointers.append(v); v += n * s.outFeatures }
        }
        doraScratch = try FloatBlock(count: 0)
        maxRows = n
        let dropoutCount = (target.adapterDropout > 0) ? n * maxIn : 0
        dropoutX = try FloatBlock(count: dropoutCount)
        dropoutD = try FloatBlock(count: dropoutCount)
        dmask = try FloatBlock(count: modelDropout && c.residPdrop > 0 ? n * C : 0)
    }

    /// The backward buffers (weight gradients are set per layer by trunkBackward).
    private func layerGrads() -> LayerGrads {
        LayerGrads(
            dres: dres, dln: dln, datt: datt, dqkv: dqkv, dfc: dfc, attnScratch: attnScratch.base,
            attnSlots: attnSlots, attnSlotSize: attnSlotSize, weights: nil, dmask: dmask.count > 0 ? dmask.base : nil)
    }

    var trainableAdapter: Adapter? { if case .adapter(let a) = target { return a } else { return nil } }

    /// The branches that run in this pass: the model's enabled adapters,
    /// plus the trained one (scale 1 when it is not attached) with its buffers.
    /// LoRA dropout only when `training` (an evaluation pass runs the adapter
    /// as PEFT's module in eval mode: no dropout).
    private func loraContext(training: Bool) throws -> LoRAContext {
        // Adapters attached after the trainer was made may have larger ranks
        // than the scratch was sized for (frozen branches keep u there).
        var rank = model.maxActiveRank
        if let a = trainableAdapter {
            if model.attachments.contains(where: { $0.adapter === a && $0.merged }) {
                throw LoRAError.wrongState("adapter \(a.name) is merged into the weights; unmerge it before training it")
            }
            rank = max(rank, a.maxRank)
        }
        if loraScratch.count < maxRows * rank { loraScratch = try FloatBlock(count: maxRows * rank) }
        var active = model.activeLoRA
        if let a = trainableAdapter, !active.contains(where: { $0.adapter === a }) { active.append(ActiveLoRA(adapter: a, scale: 1)) }
        if case .fullModel = target, active.contains(where: { $0.adapter.config.useDoRA }) {
            throw LoRAError.unsupported("full fine-tuning with a DoRA adapter attached; detach or merge it first")
        }
        active = try model.withDoRAFactors(active)
        var ctx = LoRAContext(active: active, scratch: loraScratch.base, training: nil)
        let maxOut = max(3 * model.config.nEmbd, model.config.innerSize)
        let doraCount = LoRAContext.doraScratchCount(active, rows: maxRows, maxOut: maxOut)
        if doraCount > 0 {
            if doraScratch.count < doraCount { doraScratch = try FloatBlock(count: doraCount) }
            ctx.doraScratch = doraScratch.base
            ctx.doraArea = maxRows * maxOut
        }
        if let a = trainableAdapter {
            let p = Float(a.config.loraDropout)
            let dropout =
                p > 0 && training
                ? LoRADropout(
                    p: p, seed: dropoutSeed, mask: dropoutD.base, input: dropoutX.base,
                    T: currentT, block: block, rowOffset: dropoutRowOffset) : nil
            ctx.training = LoRATrainingBuffers(adapter: a, u: uPointers, gradients: gradients.base, dropout: dropout, v: vPointers)
        }
        ctx.layerNorms = try LayerNormOverride.overrides(ctx.active, training: ctx.training)
        if case .fullModel = target, !ctx.layerNorms.isEmpty {
            throw LoRAError.unsupported("full fine-tuning with an adapter with modules_to_save attached; detach or merge it first")
        }
        return ctx
    }

    /// Runs forward (and backward unless `gradScale` is nil) for ids [B, T]
    /// with next-token targets [B, T] (negative: ignored). Gradients are added
    /// to `gradients` scaled by gradScale. Returns the summed loss and the
    /// number of counted targets.
    func run(ids: [TokenID], targets: [Int32], B: Int, T: Int, gradScale: Float?) throws -> (loss: Double, tokens: Int) {
        guard B >= 1, B <= maxBatch, T >= 1, T <= block, ids.count == B * T, targets.count == B * T else {
            throw LoRAError.invalidArgument("batch [\(B), \(T)] does not fit the trainer's [\(maxBatch), \(block)]")
        }
        try ids.withUnsafeBufferPointer { try model.checkTokens($0) }
        let c = model.config
        let w = model.weights
        let n = B * T
        let C = c.nEmbd
        let V = c.vocabSize
        currentT = T
        let positions = (0..<n).map { Int32($0 % T) }
        let backward = gradScale != nil
        let lora = try loraContext(training: backward)
        // GPT-2's dropouts, only in passes with a backward (evaluation never drops).
        let dropout =
            modelDropout && backward
            ? ModelDropout(
                embd: Float(c.embdPdrop), attn: Float(c.attnPdrop), resid: Float(c.residPdrop), seed: dropoutSeed, T: T,
                block: block, rowOffset: dropoutRowOffset) : nil
        let acts = TrunkActs(layers: layerActs, lnf: lnf, lnfMean: lnfMean, lnfRstd: lnfRstd)
        let xFinal = model.trunkForward(ids: ids, positions: positions, acts, B: B, T: T, lora: lora, dropout: dropout)

        let count = targets.reduce(0) { $0 + ($1 >= 0 && Int($1) < V ? 1 : 0) }
        for t in targets where t >= V { throw LoRAError.invalidArgument("label \(t) is out of range (0 to \(V - 1))") }
        if backward, case .none = target { throw LoRAError.invalidArgument("this pass was built for evaluation only") }
        if backward { dres.update(repeating: 0, count: n * C) }
        var loss = 0.0
        try targets.withUnsafeBufferPointer { tp in
            guard let tbase = tp.baseAddress else { return }
            var r0 = 0
            while r0 < n {
                let rows = min(chunkRows, n - r0)
                let chunk = logitsChunk.base
                baseMatmul(transW: true, M: rows, N: V, K: C, A: lnf + r0 * C, lda: C, W: w.lmHead, beta: 0, C: chunk, ldc: V)
                let partial = crossEntropyForwardBackward(logits: chunk, targets: tbase + r0, rows: rows, V: V, gradScale: gradScale ?? 0)
                guard partial.isFinite else { throw LoRAError.numerical("loss is not finite") }
                loss += partial
                if backward {
                    // dlnf = dlogits · W_head (into dln), dW_head += dlogitsᵀ · lnf
                    baseMatmul(transW: false, M: rows, N: C, K: V, A: chunk, lda: V, W: w.lmHead, beta: 0, C: dln + r0 * C, ldc: C)
                    if let g = fullGrads?.lmHead.f32 {
                        gemm(
                            transA: true, transB: false, M: V, N: C, K: rows, alpha: 1, A: chunk, lda: V,
                            B: lnf + r0 * C, ldb: C, beta: 1, C: g, ldc: C)
                    }
                }
                r0 += rows
            }
        }
        guard backward else { return (loss, count) }

        // LoRA: nothing below the lowest adapted layer needs a gradient, nor
        // does that layer's input (the embeddings are frozen).
        let lowest =
            trainableAdapter.map { a in
                let saved = a.savedModules.map { m -> Int in
                    switch m.kind {
                    case .ln1(let l), .ln2(let l): return l
                    case .lnf: return c.nLayer
                    }
                }
                return a.embedding != nil ? 0 : (a.slots.map(\.layer) + saved).min() ?? c.nLayer
            } ?? 0
        model.trunkBackward(
            ids: ids, positions: positions, acts, xFinal: xFinal, layerGrads(), full: fullGrads,
            lowest: lowest, recompute: checkpointing, B: B, T: T, lora: lora, dropout: dropout)
        return (loss, count)
    }
}

extension TrainingTarget {
    var adapterDropout: Double { if case .adapter(let a) = self { return a.config.loraDropout } else { return 0 } }
}
