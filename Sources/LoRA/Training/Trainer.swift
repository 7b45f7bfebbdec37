import Foundation

/// Hyperparameters, named after transformers' TrainingArguments.
public struct TrainerParams: Sendable, Equatable {
    public var learningRate: Double = 2e-4
    public var weightDecay: Double = 0
    public var adamBeta1: Double = 0.9
    public var adamBeta2: Double = 0.999
    public var adamEpsilon: Double = 1e-8
    public var lrScheduler: LRScheduler = .linear
    public var warmupSteps = 0
    /// Optimizer steps in the whole run (the schedules need it).
    public var maxSteps = 100
    public var gradientAccumulationSteps = 1
    /// nil disables clipping.
    public var maxGradNorm: Double? = 1.0
    public var batchSize = 4
    /// Tokens per sequence; 0 (the default) means min(256, the model's n_positions),
    /// resolved by `resolved(for:)` when a trainer is created.
    public var blockSize = 0
    /// The block size used when none is given, capped by the model.
    public static let defaultBlockSize = 256
    public var seed: UInt64 = 42
    public var gradientCheckpointing = false
    /// LoRA+ (PEFT's create_loraplus_optimizer): B's learning rate is this
    /// times A's (weight decay as weight_decay for both). 1: plain AdamW.
    public var loraplusLRRatio: Double = 1
    /// GPT-2's own dropouts while training, with the probabilities of the
    /// model's config.json (embd_pdrop, attn_pdrop, resid_pdrop), as
    /// transformers' Trainer runs the model (model.train()). Off by default:
    /// the base network runs deterministically and only LoRA dropout drops.
    /// Evaluation never drops.
    public var modelDropout = false
    /// With modelDropout: the model's probabilities, as a checkpoint and the
    /// data-parallel ranks compare them (set by Trainer from config.json).
    var modelDropoutRates: String? = nil

    public init() {}

    /// This configuration with the model-dependent defaults filled in
    /// (block size 0 → min(256, n_positions)).
    public func resolved(for model: GPT2Config) -> TrainerParams {
        var c = self
        if c.blockSize == 0 { c.blockSize = min(TrainerParams.defaultBlockSize, model.nPositions) }
        return c
    }

    /// Optimizer steps for `epochs` passes over `examples` examples when a
    /// step consumes batch × accumulation × `worldSize` examples (data-parallel
    /// ranks), rounded up, at least 1. The one place this rule lives (CLI,
    /// C ABI, MPI).
    public func steps(forEpochs epochs: Double, examples: Int, worldSize: Int = 1) throws -> Int {
        guard epochs.isFinite, epochs > 0 else {
            throw LoRAError.invalidArgument("num_train_epochs must be a finite number > 0, got \(epochs)")
        }
        let perStep = Double(max(1, batchSize)) * Double(max(1, gradientAccumulationSteps)) * Double(max(1, worldSize))
        let steps = (Double(max(0, examples)) * epochs / perStep).rounded(.up)
        guard steps < Double(Int32.max) else {
            throw LoRAError.invalidArgument("num_train_epochs \(epochs) over \(examples) examples makes \(steps) steps, more than 2^31")
        }
        return max(1, Int(steps))
    }

    public func validate(model: GPT2Config) throws {
        let blockSize = resolved(for: model).blockSize
        func bad(_ m: String) -> LoRAError { .invalidArgument(m) }
        guard learningRate.isFinite, learningRate >= 0 else { throw bad("learning_rate must be a finite number >= 0") }
        guard weightDecay.isFinite, weightDecay >= 0 else { throw bad("weight_decay must be a finite number >= 0") }
        guard adamBeta1.isFinite, (0..<1).contains(adamBeta1), adamBeta2.isFinite, (0..<1).contains(adamBeta2) else {
            throw bad("adam betas must be in [0, 1)")
        }
        guard adamEpsilon.isFinite, adamEpsilon > 0 else { throw bad("adam_epsilon must be > 0") }
        guard warmupSteps >= 0, maxSteps >= 1 else { throw bad("max_steps must be >= 1 and warmup_steps >= 0") }
        guard gradientAccumulationSteps >= 1, gradientAccumulationSteps <= 1 << 16 else {
            throw bad("gradient_accumulation_steps must be in 1...65536")
        }
        guard maxSteps <= Int(Int32.max) else { throw bad("max_steps must be at most 2^31 - 1") }
        if let g = maxGradNorm { guard g.isFinite, g > 0 else { throw bad("max_grad_norm must be a finite number > 0") } }
        guard batchSize >= 1, batchSize <= 1 << 16 else { throw bad("batch_size must be in 1...65536") }
        guard blockSize >= 2 else { throw bad("block_size must be >= 2 (0: min(256, n_positions))") }
        guard loraplusLRRatio.isFinite, loraplusLRRatio > 0 else { throw bad("loraplus_lr_ratio must be a finite number > 0") }
        guard blockSize <= model.nPositions else {
            throw bad("block_size \(blockSize) exceeds the model's n_positions (\(model.nPositions))")
        }
        if modelDropout {
            for (name, p) in [("embd_pdrop", model.embdPdrop), ("attn_pdrop", model.attnPdrop), ("resid_pdrop", model.residPdrop)] {
                guard p >= 0, p < 1 else { throw bad("model_dropout: the model's \(name) is \(p); it must be in [0, 1)") }
            }
        }
    }
}

/// Trains an adapter (LoRA) or the whole model (full fine-tuning) with AdamW.
/// A trainer owns its gradient and optimizer state; the model and adapter
/// must not be used by anything else while it runs.
///
/// Thread safety (why `@unchecked Sendable`): a trainer may be handed to
/// another thread and run there (a training thread cancelled from the UI
/// thread through its progress callback is the tested case), but it is used
/// by one thread at a time: its buffers and state have no lock.
public final class Trainer: @unchecked Sendable {
    public let model: Model
    public let adapter: Adapter?
    public private(set) var config: TrainerParams
    let pass: TrainingPass
    let optimizer: AdamW
    let m: FloatBlock
    let v: FloatBlock
    /// The parameter block's AdamW groups: ranges with their learning-rate
    /// factor (LoRA+ gives B loraplus_lr_ratio) and weight decay on or off.
    let paramGroups: [AdamW.Group]
    /// Optimizer steps taken.
    public internal(set) var step = 0
    /// Data position of `train` (epoch, next index in the epoch's order).
    var epoch = 0
    var offset = 0
    /// Where the run stands: step, data position, RNG (what a checkpoint saves).
    public var state: TrainerState {
        var p = TrainerState()
        p.step = step; p.epoch = epoch; p.offset = offset; p.rngState = rng.state
        return p
    }
    func restore(_ p: TrainerState) {
        step = p.step; epoch = p.epoch; offset = p.offset; rng.state = p.rngState
    }
    /// Micro-batches accumulated since the last optimizer step.
    public private(set) var pendingMicroBatches = 0
    var rng: SplitMix64
    /// Data-parallel training: the host's all-reduce and this process's rank
    /// (see `GradientReducer`); nil or a world of 1: one process.
    public var gradientReducer: GradientReducer?
    /// Gradients + step statistics, summed over ranks in one call.
    var reductionBuffer: FloatBlock?

    /// The parameters being trained.
    var params: FloatBlock { adapter?.params ?? model.weights.block }

    /// `evaluationOnly` allocates no gradient or optimizer state (for `evaluate`/`loss` only).
    public init(model: Model, adapter: Adapter?, config: TrainerParams, evaluationOnly: Bool = false) throws {
        var config = config.resolved(for: model.config)
        try config.validate(model: model.config)
        if config.modelDropout {
            let c = model.config
            config.modelDropoutRates = "embd_pdrop \(c.embdPdrop), attn_pdrop \(c.attnPdrop), resid_pdrop \(c.residPdrop)"
        }
        guard model.config.nLayer >= 1 else { throw LoRAError.invalidArgument("training needs at least one layer") }
        try adapter?.checkFits(model.config)
        if adapter == nil, !evaluationOnly, model.dtype != .f32 {
            throw LoRAError.invalidArgument(
                "full fine-tuning needs an f32 base (this model's weights are \(model.dtype.rawValue)); train a LoRA adapter on it instead")
        }
        self.model = model
        self.adapter = adapter
        self.config = config
        pass = try TrainingPass(
            model: model, target: evaluationOnly ? .none : adapter.map { .adapter($0) } ?? .fullModel,
            batch: config.batchSize, block: config.blockSize, checkpointing: config.gradientCheckpointing,
            modelDropout: config.modelDropout && !evaluationOnly)
        optimizer = AdamW(beta1: config.adamBeta1, beta2: config.adamBeta2, eps: config.adamEpsilon, weightDecay: config.weightDecay)
        let count = evaluationOnly ? 0 : adapter?.params.count ?? model.weights.block.count
        m = try FloatBlock(count: count)
        v = try FloatBlock(count: count)
        if let adapter {
            let ratio = config.loraplusLRRatio
            // DoRA's magnitude: PEFT's LoRA+ puts every 1-D parameter with B.
            let slotGroups = adapter.slots.flatMap { s in
                [
                    AdamW.Group(range: s.offsetA..<(s.offsetA + s.countA), lrFactor: 1, decay: true),
                    AdamW.Group(range: s.offsetB..<(s.offsetB + s.countB), lrFactor: ratio, decay: true),
                ] + (s.offsetM.map { [AdamW.Group(range: $0..<($0 + s.outFeatures), lrFactor: ratio, decay: true)] } ?? [])
                    // lora_bias: B's rate, no decay (a bias: transformers' Trainer; PEFT's LoRA+ groupB_no_decay).
                    + (s.offsetBias.map { [AdamW.Group(range: $0..<($0 + s.outFeatures), lrFactor: ratio, decay: false)] } ?? [])
            }
            // modules_to_save (LayerNorms): no weight decay, as transformers'
            // Trainer and PEFT's LoRA+ (1-D, not in the decay set: B's rate).
            // LoRA on wte: PEFT's LoRA+ gives embedding adapters their own
            // rate, loraplus_lr_embedding (1e-6 by default), scheduled like the rest.
            let embeddingFactor = ratio == 1 ? 1 : (config.learningRate > 0 ? 1e-6 / config.learningRate : 0)
            let embeddingGroups =
                adapter.embedding.map { e in
                    [
                        AdamW.Group(range: e.offsetA..<(e.offsetA + e.countA), lrFactor: embeddingFactor, decay: true),
                        AdamW.Group(range: e.offsetB..<(e.offsetB + e.countB), lrFactor: embeddingFactor, decay: true),
                    ]
                } ?? []
            paramGroups =
                slotGroups + embeddingGroups
                + adapter.savedModules.map { m in
                    AdamW.Group(range: m.offset..<(m.offset + 2 * m.count), lrFactor: ratio, decay: false)
                }
        } else {
            guard config.loraplusLRRatio == 1 else {
                throw LoRAError.invalidArgument("loraplus_lr_ratio applies to LoRA adapters, not to full fine-tuning")
            }
            // transformers' Trainer: no decay for biases and LayerNorm weights.
            paramGroups = model.weights.layout.slots.map {
                AdamW.Group(
                    range: $0.offset..<($0.offset + $0.count), lrFactor: 1,
                    decay: !$0.name.hasSuffix(".bias") && !$0.name.contains("ln_"))
            }
        }
        rng = SplitMix64(seed: config.seed)
        pass.gradients.zero()
    }

    /// Changes the run's length (the schedules follow the new total), e.g. to
    /// a number of epochs once the data is known, or to extend a run.
    public func setMaxSteps(_ n: Int) throws {
        guard n >= 1 else { throw LoRAError.invalidArgument("max_steps must be at least 1 (got \(n))") }
        config.maxSteps = n
    }

    /// The learning rate of optimizer step k (0-based).
    public func learningRate(at k: Int) -> Double {
        config.learningRate * config.lrScheduler.multiplier(step: k, warmup: config.warmupSteps, total: config.maxSteps)
    }

    /// The accumulated gradient (laid out like the trained parameters).
    public var gradients: UnsafeMutableBufferPointer<Float> { pass.gradients.buffer }

    /// Next-token targets from HF-style labels: targets[t] = labels[t + 1], the last −100.
    static func shiftedTargets(_ labels: [[Int32]], T: Int) -> [Int32] {
        var out = [Int32](repeating: -100, count: labels.count * T)
        for (b, row) in labels.enumerated() {
            for t in 0..<(T - 1) where t + 1 < row.count { out[b * T + t] = row[t + 1] }
        }
        return out
    }

    /// Pads rows on the right to the longest (padding labels are ignored).
    static func padRight(_ ids: [[TokenID]], _ labels: [[Int32]]?) throws -> (ids: [TokenID], labels: [[Int32]], T: Int) {
        guard !ids.isEmpty, ids.allSatisfy({ !$0.isEmpty }) else { throw LoRAError.invalidArgument("empty batch or sequence") }
        if let labels {
            guard labels.count == ids.count, zip(labels, ids).allSatisfy({ $0.count == $1.count }) else {
                throw LoRAError.invalidArgument("labels must have the shape of the token ids")
            }
            // As torch's cross-entropy with ignore_index=-100: other negative labels are errors.
            for row in labels {
                for l in row where l < 0 && l != -100 {
                    throw LoRAError.invalidArgument("label \(l) is negative; use -100 to ignore a position")
                }
            }
        }
        let T = ids.map(\.count).max() ?? 0
        var flat = [TokenID](repeating: 0, count: ids.count * T)
        var labs: [[Int32]] = []
        for (b, row) in ids.enumerated() {
            for (t, id) in row.enumerated() { flat[b * T + t] = id }
            var l = labels?[b] ?? row.map { Int32($0) }
            l += [Int32](repeating: -100, count: T - row.count)
            labs.append(l)
        }
        return (flat, labs, T)
    }

    /// Counts the targets a batch contributes (for normalising accumulated gradients).
    public static func targetCount(ids: [[TokenID]], labels: [[Int32]]?) -> Int {
        var n = 0
        for (b, row) in ids.enumerated() {
            let l = labels?[b] ?? row.map { Int32($0) }
            for t in 1..<max(1, l.count) where l[t] >= 0 { n += 1 }
        }
        return n
    }

    /// Adds the gradient of (summed loss / normalizer) over one micro-batch.
    /// Returns the batch's summed loss and target count.
    @discardableResult
    public func accumulate(ids: [[TokenID]], labels: [[Int32]]? = nil, normalizer: Int? = nil) throws -> (loss: Double, tokens: Int) {
        let (flat, labs, T) = try Trainer.padRight(ids, labels)
        let targets = Trainer.shiftedTargets(labs, T: T)
        let count = targets.filter { $0 >= 0 }.count
        let norm = normalizer ?? count
        pass.dropoutSeed = rng.next()
        let r = try pass.run(ids: flat, targets: targets, B: ids.count, T: T, gradScale: norm > 0 ? 1 / Float(norm) : 0)
        pendingMicroBatches += 1
        return r
    }

    /// Clips, applies AdamW with the scheduled learning rate, zeroes the
    /// gradients. Throws (and leaves the parameters untouched) when the
    /// gradient is not finite. Returns the gradient norm before clipping.
    @discardableResult
    public func optimizerStep() throws -> Double {
        let g = pass.gradients
        let norm = clipGradNorm(g.base, count: g.count, maxNorm: config.maxGradNorm)
        guard norm.isFinite else {
            g.zero()
            pendingMicroBatches = 0
            throw LoRAError.numerical("gradient is not finite at step \(step + 1); parameters left unchanged")
        }
        optimizer.update(
            params: params.base, grads: g.base, m: m.base, v: v.base, groups: paramGroups,
            lr: learningRate(at: step), t: step + 1)
        g.zero()
        pendingMicroBatches = 0
        step += 1
        return norm
    }

    /// One optimizer step on one batch (HF labels; nil: the ids). Returns the mean loss.
    @discardableResult
    public func step(ids: [[TokenID]], labels: [[Int32]]? = nil) throws -> Double {
        let r = try accumulate(ids: ids, labels: labels)
        guard r.tokens > 0 else { throw LoRAError.invalidArgument("the batch has no target token (all labels are -100)") }
        let mean = r.loss / Double(r.tokens)
        guard mean.isFinite else {
            pass.gradients.zero(); pendingMicroBatches = 0
            throw LoRAError.numerical("loss is not finite at step \(step + 1); parameters left unchanged")
        }
        try optimizerStep()
        return mean
    }

    /// Mean loss over a batch without touching gradients.
    public func loss(ids: [[TokenID]], labels: [[Int32]]? = nil) throws -> (loss: Double, tokens: Int) {
        let (flat, labs, T) = try Trainer.padRight(ids, labels)
        let targets = Trainer.shiftedTargets(labs, T: T)
        return try pass.run(ids: flat, targets: targets, B: ids.count, T: T, gradScale: nil)
    }
}
