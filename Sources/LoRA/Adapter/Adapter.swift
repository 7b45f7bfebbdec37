import Foundation

/// A LoRA adapter for a GPT-2 shape: the config, the adapted modules and all
/// A/B matrices in one parameter block.
///
/// Thread safety (why `@unchecked Sendable`): A and B are mutable without a
/// lock. Any number of threads may read an adapter (forward passes of the
/// models it is attached to, `save`, compression, combination) while nothing
/// writes it; initialising, loading into it or training it needs exclusive
/// use, as do the model calls that change attachments (see `Model`).
public final class Adapter: @unchecked Sendable {
    public let config: LoRAConfig
    public let modelConfig: GPT2Config
    public let slots: [LoRASlot]
    /// LoRA on the token embedding `transformer.wte`, after the slots in `params`; nil when not targeted.
    public let embedding: EmbeddingSlot?
    /// `modules_to_save`: modules trained in full, after the slots (and embedding) in `params`.
    public let savedModules: [SavedModule]
    /// All A and B matrices (DoRA magnitudes, saved modules).
    package let params: FloatBlock
    public var name: String
    /// A0 and B0 as PiSSA/OLoRA set them (laid out like `params`), kept by
    /// `initialize(from:seed:)` for `convertedForOriginalBase()`; nil otherwise.
    package internal(set) var initialParams: FloatBlock?
    /// slotIndex[layer * 4 + target] → index into slots.
    let slotIndex: [Int?]

    /// An adapter with zeroed A and B for `modelConfig`.
    public init(config: LoRAConfig, modelConfig: GPT2Config, name: String = "default") throws {
        let (resolved, embedding) = try LoRATargeting.resolveAll(config, model: modelConfig)
        var slots: [LoRASlot] = []
        var off = 0
        for (layer, target, r, alpha) in resolved {
            let (fin, fout) = target.shape(modelConfig)
            let scaling = config.useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)
            var slot = LoRASlot(
                layer: layer, target: target, moduleName: LoRATarget.moduleName(layer: layer, target),
                r: r, alpha: alpha, scaling: Float(scaling), inFeatures: fin, outFeatures: fout,
                offsetA: off, offsetB: off + r * fin, offsetM: config.useDoRA ? off + r * fin + fout * r : nil)
            if config.loraBias { slot.offsetBias = off + r * fin + fout * r }
            off += r * fin + fout * r + (config.useDoRA || config.loraBias ? fout : 0)
            slots.append(slot)
        }
        if let (r, alpha) = embedding {
            guard !config.useDoRA else { throw LoRAError.unsupported("use_dora on the embedding transformer.wte is not implemented") }
            // PEFT: "lora_bias=True is not supported (yet) for embedding layers".
            guard !config.loraBias else { throw LoRAError.unsupported("lora_bias on the embedding transformer.wte (PEFT refuses it too)") }
            let scaling = config.useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)
            let V = modelConfig.vocabSize
            let C = modelConfig.nEmbd
            self.embedding = EmbeddingSlot(
                r: r, alpha: alpha, scaling: Float(scaling), vocabSize: V, nEmbd: C, offsetA: off, offsetB: off + r * V)
            off += r * V + C * r
        } else {
            self.embedding = nil
        }
        var saved: [SavedModule] = []
        for (name, kind) in try LoRATargeting.resolveModulesToSave(config, model: modelConfig) {
            saved.append(SavedModule(kind: kind, moduleName: name, offset: off, count: modelConfig.nEmbd))
            off += 2 * modelConfig.nEmbd
        }
        self.savedModules = saved
        self.config = config
        self.modelConfig = modelConfig
        self.slots = slots
        self.params = try FloatBlock(count: off)
        self.name = name
        var idx = [Int?](repeating: nil, count: modelConfig.nLayer * 4)
        for (i, s) in slots.enumerated() { idx[s.layer * 4 + s.target.rawValue] = i }
        self.slotIndex = idx
    }

    /// Throws for a DoRA adapter: the adapter algebra (combine, compress,
    /// PiSSA conversion) works on B·A alone and would drop the magnitudes
    /// (PEFT's add_weighted_adapter does not combine them either).
    func refuseDoRA(_ what: String) throws {
        guard !config.useDoRA else {
            throw LoRAError.unsupported("\(what) DoRA adapter \(name): its magnitudes have no counterpart in B·A; merge it instead")
        }
        guard savedModules.isEmpty else {
            throw LoRAError.unsupported("\(what) adapter \(name) with modules_to_save is not implemented; merge it instead")
        }
        guard embedding == nil else {
            throw LoRAError.unsupported("\(what) adapter \(name) with LoRA on wte is not implemented")
        }
        guard !config.loraBias else {
            throw LoRAError.unsupported("\(what) adapter \(name) with lora_bias is not implemented; merge it instead")
        }
    }

    /// Throws unless the adapter was made for a model of this shape (n_embd, n_inner, n_layer).
    public func checkFits(_ c: GPT2Config) throws {
        if let e = embedding, e.vocabSize != c.vocabSize {
            throw LoRAError.invalidArgument(
                "adapter \(name) adapts wte for a vocabulary of \(e.vocabSize) tokens; the model has \(c.vocabSize)")
        }
        guard c.nEmbd == modelConfig.nEmbd, c.innerSize == modelConfig.innerSize, c.nLayer == modelConfig.nLayer else {
            throw LoRAError.invalidArgument(
                "adapter \(name) was made for another model shape (n_embd \(modelConfig.nEmbd), n_inner \(modelConfig.innerSize), n_layer \(modelConfig.nLayer)); the model has (\(c.nEmbd), \(c.innerSize), \(c.nLayer))"
            )
        }
    }

    public func slot(layer: Int, target: LoRATarget) -> LoRASlot? {
        slotIndex[layer * 4 + target.rawValue].map { slots[$0] }
    }

    package func A(_ s: LoRASlot) -> FloatPtr { params.base + s.offsetA }
    package func B(_ s: LoRASlot) -> FloatPtr { params.base + s.offsetB }
    /// DoRA's magnitude m [out] of a slot; nil without DoRA.
    package func magnitude(_ s: LoRASlot) -> FloatPtr? { s.offsetM.map { params.base + $0 } }
    /// lora_bias: B's bias [out] of a slot.
    package func loraBias(_ s: LoRASlot) -> FloatPtr? { s.offsetBias.map { params.base + $0 } }
    public var parameterCount: Int { params.count }
    /// The largest rank of the adapter's branches (modules and embedding).
    var maxRank: Int { max(slots.map(\.r).max() ?? 0, embedding?.r ?? 0) }

    /// Fresh weights for any `init_lora_weights`. True, "gaussian" and false
    /// are `initialize(seed:)` and leave the model alone; "pissa",
    /// "pissa_niter_N" and "olora" read each adapted module's base weight W
    /// [out, in] and replace it, in `model`, by the residual W − s·B·A:
    ///
    /// - pissa: W = U·S·Vh (thin SVD); A = diag(√(S_r/s))·Vh_r [r, in],
    ///   B = U_r·diag(√(S_r/s)) [out, r], so s·B·A is W's best rank-r part.
    /// - pissa_niter_N: the same from a randomized SVD (`Linalg.svdLowRank`,
    ///   N subspace iterations, test matrix from SplitMix64(`seed`)).
    /// - olora: Q, R = qr(W); B = Q[:, :r], A = R[:r].
    ///
    /// The adapter is not attached. A0 and B0 are kept in `initialParams` for
    /// `convertedForOriginalBase()`. Everything is computed before anything
    /// changes: on error neither the model nor the adapter is modified.
    /// Calling it twice on one model decomposes the residual again (as PEFT
    /// does with two PiSSA adapters).
    /// The one initialiser of an adapter's weights, for every kind.
    ///
    /// With DoRA, each magnitude then starts as PEFT's DoraLinearLayer sets
    /// it: m = ‖W + s·(B·A)ᵀ‖ per output feature, W the module's weight in
    /// `model` after the initialisation above (PiSSA's residual).
    public func initialize(from model: Model, seed: UInt64) throws {
        switch config.initLoraWeights {
        case .kaiming, .gaussian, .random:
            try checkFits(model.config)
            try initializeAB(seed: seed)
        case .pissa, .olora:
            guard embedding == nil else {
                throw LoRAError.unsupported(
                    "LoRA on wte with init_lora_weights \(JSON.compact(config.initLoraWeights.json)) is not implemented")
            }
            guard !config.useDoRA else {
                throw LoRAError.unsupported(
                    "use_dora with init_lora_weights \(JSON.compact(config.initLoraWeights.json)) is not implemented")
            }
            try initializeFromBase(model, seed: seed)
        }
        if config.useDoRA || !savedModules.isEmpty {
            if model.attachments.contains(where: { $0.adapter === self && $0.merged }) {
                throw LoRAError.wrongState("adapter \(name) is merged into the model; unmerge it before initialising it")
            }
        }
        // modules_to_save start as copies of the model's modules.
        for m in savedModules {
            let (w, b) = model.layerNormPointers(m.kind)
            (params.base + m.offset).update(from: w, count: m.count)
            (params.base + m.offset + m.count).update(from: b, count: m.count)
        }
        if config.useDoRA {
            for s in slots {
                let norms = DoRAFactors.columnNorms(
                    branch(s), weight: model.weightMatrix(layer: s.layer, target: s.target), factor: 1)
                magnitude(s)!.update(from: norms, count: s.outFeatures)
            }
        }
    }

    /// Fresh weights as PEFT initialises them (`init_lora_weights` true,
    /// "gaussian" or false), from a seeded generator. PiSSA and OLoRA read
    /// and change the base weights: use `initialize(from:seed:)` for them.
    package func initialize(seed: UInt64) throws {
        switch config.initLoraWeights {
        case .pissa, .olora:
            throw LoRAError.invalidArgument(
                "init_lora_weights \(JSON.compact(config.initLoraWeights.json)) needs the base model: use initialize(from:seed:)")
        default: break
        }
        guard !config.useDoRA, savedModules.isEmpty else {
            throw LoRAError.invalidArgument(
                "a DoRA adapter's magnitudes and modules_to_save copies need the base model: use initialize(from:seed:)")
        }
        try initializeAB(seed: seed)
    }

    /// A and B of `initialize(seed:)` (DoRA magnitudes untouched).
    private func initializeAB(seed: UInt64) throws {
        initialParams = nil
        var rng = SplitMix64(seed: seed)
        for s in slots {
            let a = A(s)
            let b = B(s)
            switch config.initLoraWeights {
            case .kaiming, .pissa, .olora:
                // kaiming_uniform_(a=√5): U(-1/√in, 1/√in); B = 0.
                let bound = 1 / Float(s.inFeatures).squareRoot()
                for i in 0..<s.countA { a[i] = (2 * rng.nextFloat() - 1) * bound }
                b.update(repeating: 0, count: s.countB)
            case .gaussian:
                let std = 1 / Float(s.r)
                for i in 0..<s.countA { a[i] = rng.nextGaussian() * std }
                b.update(repeating: 0, count: s.countB)
            case .random:
                // nn.Linear's default: U(-1/√fan_in, 1/√fan_in) for both.
                let ba = 1 / Float(s.inFeatures).squareRoot()
                let bb = 1 / Float(s.r).squareRoot()
                for i in 0..<s.countA { a[i] = (2 * rng.nextFloat() - 1) * ba }
                for i in 0..<s.countB { b[i] = (2 * rng.nextFloat() - 1) * bb }
            }
            // lora_bias: zero (PEFT zeroes it with B), nn.Linear's default without init.
            if let bias = loraBias(s) {
                let bound = 1 / Float(s.r).squareRoot()
                for j in 0..<s.outFeatures { bias[j] = config.initLoraWeights == .random ? (2 * rng.nextFloat() - 1) * bound : 0 }
            }
        }
        if let e = embedding {
            // PEFT's lora.Embedding: A zeros and B ~ N(0, 1) (nn.Embedding's
            // default); init_lora_weights false keeps both N(0, 1).
            let a = params.base + e.offsetA
            let b = params.base + e.offsetB
            let random = config.initLoraWeights == .random
            for i in 0..<e.countA { a[i] = random ? rng.nextGaussian() : 0 }
            for i in 0..<e.countB { b[i] = rng.nextGaussian() }
        }
    }
}
