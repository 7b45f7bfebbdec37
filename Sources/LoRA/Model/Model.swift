import Foundation

/// A GPT-2 language model: config, weights, optional tokenizer.
///
/// Thread safety (why `@unchecked Sendable`): the weights and the attached
/// adapters are mutable state without a lock. Reading calls (`logits`,
/// `generate`, `InferenceSession.forward`) may run from several threads at
/// once: each has its own buffers and only reads the model. Calls that change
/// the model (`attach`, `detach`, `setScale`, `setEnabled`, `merge`,
/// `unmerge`, `setKVCacheDType`, PiSSA/OLoRA initialisation, training) need exclusive use: no
/// other call on this model may run meanwhile. Two threads sharing one
/// model for logits and generation are tested from C (Tests/C/test_capi.c).
public final class Model: @unchecked Sendable {
    public let config: GPT2Config
    package let weights: GPT2Weights
    public let tokenizer: Tokenizer?
    /// The directory the model was loaded from, if any.
    public let directory: String?

    /// An adapter attached to the model, applied in every forward pass while enabled.
    public struct Attachment {
        public let adapter: Adapter
        public var scale: Float
        public var enabled: Bool
        /// Folded into the base weights (see `merge`): not applied on the fly.
        public internal(set) var merged = false
        /// A merged DoRA adapter: each slot's ‖W + ΔW‖ from the merge, for unmerging (PEFT caches it too).
        var doraMergeNorms: [[Float]]? = nil
        /// A merged adapter with modules_to_save: the model's own parameters of those modules, for unmerging.
        var savedModulesBackup: [[Float]]? = nil
    }
    /// Attached adapters, applied in order. Change them only while no
    /// inference or training runs on this model.
    public private(set) var attachments: [Attachment] = []

    /// The storage of the keys and values that generation and the engine
    /// cache: f32 (the default; every result as without a cache) or bf16
    /// (half the memory; each key and value rounded to nearest even when
    /// cached, queries and every sum stay F32). Sessions and engines keep
    /// the dtype they were created with; whole-sequence logits keep no cache.
    public private(set) var kvCacheDType: WeightDType = .f32

    /// Sets `kvCacheDType` for the sessions and engines created after it
    /// (f32 or bf16; other dtypes are refused). Not while another thread
    /// creates one.
    public func setKVCacheDType(_ dtype: WeightDType) throws {
        kvCacheDType = try Model.checkedKVCacheDType(dtype)
    }

    /// The dtype if a KV cache can be stored in it (f32, bf16).
    static func checkedKVCacheDType(_ dtype: WeightDType) throws -> WeightDType {
        guard dtype == .f32 || dtype == .bf16 else {
            throw LoRAError.invalidArgument("kv_cache_dtype \"\(dtype.rawValue)\" is not supported (expected f32 or bf16)")
        }
        return dtype
    }

    package init(config: GPT2Config, weights: GPT2Weights, tokenizer: Tokenizer? = nil, directory: String? = nil) throws {
        try BLAS.load()
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.directory = directory
    }

    /// Loads `config.json` + `model.safetensors` (and the tokenizer files when
    /// present) from a Hugging Face model directory. `dtype` is the storage
    /// of the weight matrices (nil: the dtype a model converted by liblora
    /// was saved in, else f32); F32, F16 and BF16 checkpoints are converted
    /// at load, a saved q8_0 model is read without re-quantizing.
    /// `kvCacheDType`: see the property.
    public static func load(directory: String, dtype: WeightDType? = nil, kvCacheDType: WeightDType = .f32) throws -> Model {
        let kvCacheDType = try checkedKVCacheDType(kvCacheDType)
        try BLAS.load()
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw LoRAError.io(path: dir, reason: "not a directory")
        }
        let config = try GPT2Config.load(path: dir + "/config.json")
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        let weights = try GPT2Weights(config: config, dtype: try dtype ?? QuantizedLayout.savedDType(file) ?? .f32)
        try weights.load(from: file)
        var tokenizer: Tokenizer? = nil
        let fm = FileManager.default
        if fm.fileExists(atPath: dir + "/tokenizer.json") || fm.fileExists(atPath: dir + "/vocab.json") {
            tokenizer = try Tokenizer.load(directory: dir)
            if let t = tokenizer, t.vocabSize > config.vocabSize {
                throw LoRAError.invalidFile(
                    path: dir, reason: "the tokenizer has \(t.vocabSize) tokens but the model's vocab_size is \(config.vocabSize)")
            }
        }
        let model = try Model(config: config, weights: weights, tokenizer: tokenizer, directory: dir)
        model.kvCacheDType = kvCacheDType
        return model
    }

    /// A fresh model initialised as transformers' GPT2PreTrainedModel does:
    /// weights N(0, 0.02²) (the residual projections c_proj N(0, (0.02/√(2·n_layer))²)),
    /// biases 0, LayerNorm weight 1 and bias 0.
    public static func initialized(config: GPT2Config, seed: UInt64, tokenizer: Tokenizer? = nil) throws -> Model {
        let w = try GPT2Weights(config: config)
        var rng = SplitMix64(seed: seed)
        let projStd = 0.02 / Float(2 * config.nLayer).squareRoot()
        for slot in w.layout.slots {
            let p = w.block.base + slot.offset
            let n = slot.count
            if slot.name.hasSuffix(".bias") {
                p.update(repeating: 0, count: n)
            } else if slot.name.contains("ln_") {
                p.update(repeating: 1, count: n)
            } else {
                let std: Float = slot.name.hasSuffix("c_proj.weight") ? projStd : 0.02
                for i in 0..<n { p[i] = rng.nextGaussian() * std }
            }
        }
        return try Model(config: config, weights: w, tokenizer: tokenizer)
    }

    /// A model with random weights N(0, std²) (benchmarks, tests); with a
    /// reduced-precision `dtype`, the same values rounded to it.
    public static func random(config: GPT2Config, seed: UInt64 = 0, std: Float = 0.02, dtype: WeightDType = .f32) throws -> Model {
        let w = try GPT2Weights(config: config, dtype: dtype)
        var rng = SplitMix64(seed: seed)
        if dtype == .f32 {
            let b = w.block.base
            for i in 0..<w.block.count { b[i] = rng.nextGaussian() * std }
        } else {
            // The F32 model's draws in its layout order, each matrix rounded as it is complete.
            for slot in GPT2Layout(config: config).slots {
                if let own = w.layout[slot.name] {
                    let p = w.block.base + own.offset
                    for i in 0..<slot.count { p[i] = rng.nextGaussian() * std }
                } else if let m = w.matrices[slot.name] {
                    let values = (0..<slot.count).map { _ in rng.nextGaussian() * std }
                    try m.store(values, name: slot.name)
                }
            }
        }
        for l in w.layers {
            for i in 0..<config.nEmbd { l.ln1W[i] = 1 + 0.1 * l.ln1W[i]; l.ln2W[i] = 1 + 0.1 * l.ln2W[i] }
        }
        for i in 0..<config.nEmbd { w.lnfW[i] = 1 + 0.1 * w.lnfW[i] }
        return try Model(config: config, weights: w)
    }

    public var parameterCount: Int { weights.parameterCount }

    /// The storage type of the weight matrices.
    public var dtype: WeightDType { weights.dtype }

    /// The same model with its weight matrices in another dtype (a copy;
    /// attached adapters are not carried over). From f32 this rounds as a
    /// load with that dtype would; between reduced precisions it rounds the
    /// dequantized values again.
    public func converted(to dtype: WeightDType) throws -> Model {
        let w = try GPT2Weights(config: config, dtype: dtype)
        for slot in w.layout.slots {
            guard let src = weights.pointer(slot.name) else { continue }
            (w.block.base + slot.offset).update(from: src, count: slot.count)
        }
        for (name, m) in weights.matrices {
            guard let dst = w.matrices[name] else { continue }
            try dst.store(m.dequantized(), name: name)
        }
        let model = try Model(config: config, weights: w, tokenizer: tokenizer, directory: directory)
        model.kvCacheDType = kvCacheDType
        return model
    }

    /// Attaches an adapter (several may be attached; each is applied while enabled).
    public func attach(_ adapter: Adapter, scale: Float = 1) throws {
        try adapter.checkFits(config)
        guard scale.isFinite else { throw LoRAError.invalidArgument("adapter scale must be finite") }
        guard !attachments.contains(where: { $0.adapter === adapter }) else {
            throw LoRAError.wrongState("adapter \(adapter.name) is already attached")
        }
        attachments.append(Attachment(adapter: adapter, scale: scale, enabled: true))
    }

    /// Detaches an adapter; a merged one is unmerged first.
    public func detach(_ adapter: Adapter) throws {
        guard let i = attachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw LoRAError.wrongState("adapter \(adapter.name) is not attached")
        }
        if attachments[i].merged { try unmerge(adapter) }
        attachments.remove(at: i)
    }

    public func setScale(_ adapter: Adapter, _ scale: Float) throws {
        guard scale.isFinite else { throw LoRAError.invalidArgument("adapter scale must be finite") }
        let i = try unmergedAttachment(adapter)
        attachments[i].scale = scale
    }

    public func setEnabled(_ adapter: Adapter, _ enabled: Bool) throws {
        let i = try unmergedAttachment(adapter)
        attachments[i].enabled = enabled
    }

    private func unmergedAttachment(_ adapter: Adapter) throws -> Int {
        guard let i = attachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw LoRAError.wrongState("adapter \(adapter.name) is not attached")
        }
        guard !attachments[i].merged else { throw LoRAError.wrongState("adapter \(adapter.name) is merged; unmerge it first") }
        return i
    }

    func setMerged(_ i: Int, _ merged: Bool) { attachments[i].merged = merged }
    func setDoRAMergeNorms(_ i: Int, _ norms: [[Float]]?) { attachments[i].doraMergeNorms = norms }
    func setSavedModulesBackup(_ i: Int, _ backup: [[Float]]?) { attachments[i].savedModulesBackup = backup }

    var activeLoRA: [ActiveLoRA] {
        attachments.filter { $0.enabled && $0.scale != 0 && !$0.merged }.map { ActiveLoRA(adapter: $0.adapter, scale: $0.scale) }
    }

    /// `active` with each DoRA adapter's factors for a pass over the current
    /// weights (`DoRAFactors`: norms of W + σ·ΔW, recomputed per pass as PEFT does).
    func withDoRAFactors(_ active: [ActiveLoRA]) throws -> [ActiveLoRA] {
        try active.map { a in
            guard a.adapter.config.useDoRA else { return a }
            var b = a
            b.dora = try DoRAFactors(adapter: a.adapter, scale: a.scale, model: self)
            return b
        }
    }

    /// The largest rank among enabled adapters (0 without any).
    var maxActiveRank: Int { activeLoRA.map(\.adapter.maxRank).max() ?? 0 }

    func checkTokens(_ ids: UnsafeBufferPointer<TokenID>) throws {
        for (i, t) in ids.enumerated() where t < 0 || Int(t) >= config.vocabSize {
            throw LoRAError.invalidArgument("token id \(t) at index \(i) is out of range (0 to \(config.vocabSize - 1))")
        }
    }

    /// Logits [T, vocab] for one sequence (no cache).
    public func logits(_ ids: [TokenID]) throws -> [Float] {
        guard !ids.isEmpty else { throw LoRAError.invalidArgument("empty token sequence") }
        let session = try InferenceSession(model: self, batch: 1, capacity: ids.count, keepsCache: false)
        return try session.forward(ids, batch: 1, lastOnly: false)
    }

    /// As `logits(_:)`, written into `out` (exactly ids.count × vocab floats).
    public func logits(_ ids: [TokenID], into out: UnsafeMutableBufferPointer<Float>) throws {
        guard !ids.isEmpty else { throw LoRAError.invalidArgument("empty token sequence") }
        let session = try InferenceSession(model: self, batch: 1, capacity: ids.count, keepsCache: false)
        try session.forward(ids, batch: 1, lastOnly: false, into: out)
    }

    /// Logits [B, T, vocab] for sequences of different lengths, padded to the
    /// longest. Left padding gives each row the positions it would have alone
    /// (as transformers' generate computes them); with right padding positions
    /// run from 0. Logits at padding positions are zeros.
    public func logits(batch: [[TokenID]], padding: Padding = .left) throws -> [Float] {
        guard !batch.isEmpty, batch.allSatisfy({ !$0.isEmpty }) else {
            throw LoRAError.invalidArgument("empty batch or empty sequence")
        }
        let T = batch.map(\.count).max() ?? 0
        let (ids, mask) = Model.pad(batch, to: T, padding: padding)
        let session = try InferenceSession(model: self, batch: batch.count, capacity: T, keepsCache: false)
        var out = try session.forward(ids, batch: batch.count, attentionMask: mask, lastOnly: false)
        let V = config.vocabSize
        for i in 0..<mask.count where mask[i] == 0 {
            for v in 0..<V { out[i * V + v] = 0 }
        }
        return out
    }

    public enum Padding: Sendable { case left, right }

    /// Pads sequences to length T with token 0; mask 1 for real tokens.
    static func pad(_ batch: [[TokenID]], to T: Int, padding: Padding) -> ([TokenID], [Int32]) {
        var ids = [TokenID](repeating: 0, count: batch.count * T)
        var mask = [Int32](repeating: 0, count: batch.count * T)
        for (b, seq) in batch.enumerated() {
            let start = padding == .left ? T - seq.count : 0
            for (i, t) in seq.enumerated() {
                ids[b * T + start + i] = t
                mask[b * T + start + i] = 1
            }
        }
        return (ids, mask)
    }
}
