import Foundation

/// A GPT-2 language model: config, weights, optional tokenizer.
/// Inference on one model may run from several threads at once, each with
/// its own `InferenceSession`; changing weights (merge) needs exclusive use.
public final class Model: @unchecked Sendable {
    public let config: GPT2Config
    public let weights: GPT2Weights
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
    }
    /// Attached adapters, applied in order. Change them only while no
    /// inference or training runs on this model.
    public private(set) var attachments: [Attachment] = []

    public init(config: GPT2Config, weights: GPT2Weights, tokenizer: Tokenizer? = nil, directory: String? = nil) throws {
        try BLAS.load()
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.directory = directory
    }

    /// Loads `config.json` + `model.safetensors` (and the tokenizer files when
    /// present) from a Hugging Face model directory.
    public static func load(directory: String) throws -> Model {
        try BLAS.load()
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw LoraError.io(path: dir, reason: "not a directory")
        }
        let config = try GPT2Config.load(path: dir + "/config.json")
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        let weights = try GPT2Weights(config: config)
        try weights.load(from: file)
        var tokenizer: Tokenizer? = nil
        let fm = FileManager.default
        if fm.fileExists(atPath: dir + "/tokenizer.json") || fm.fileExists(atPath: dir + "/vocab.json") {
            tokenizer = try Tokenizer.load(directory: dir)
            if let t = tokenizer, t.vocabSize > config.vocabSize {
                throw LoraError.invalidFile(path: dir, reason: "the tokenizer has \(t.vocabSize) tokens but the model's vocab_size is \(config.vocabSize)")
            }
        }
        return try Model(config: config, weights: weights, tokenizer: tokenizer, directory: dir)
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

    /// A model with random weights N(0, std²) (benchmarks, tests).
    public static func random(config: GPT2Config, seed: UInt64 = 0, std: Float = 0.02) throws -> Model {
        let w = try GPT2Weights(config: config)
        var rng = SplitMix64(seed: seed)
        let b = w.block.base
        for i in 0..<w.block.count { b[i] = rng.nextGaussian() * std }
        for l in w.layers {
            for i in 0..<config.nEmbd { l.ln1W[i] = 1 + 0.1 * l.ln1W[i]; l.ln2W[i] = 1 + 0.1 * l.ln2W[i] }
        }
        for i in 0..<config.nEmbd { w.lnfW[i] = 1 + 0.1 * w.lnfW[i] }
        return try Model(config: config, weights: w)
    }

    public var parameterCount: Int { weights.layout.totalCount }

    /// Attaches an adapter (several may be attached; each is applied while enabled).
    public func attach(_ adapter: Adapter, scale: Float = 1) throws {
        guard adapter.modelConfig.nEmbd == config.nEmbd, adapter.modelConfig.innerSize == config.innerSize,
              adapter.modelConfig.nLayer == config.nLayer else {
            throw LoraError.invalidArgument("adapter \(adapter.name) was made for another model shape")
        }
        guard scale.isFinite else { throw LoraError.invalidArgument("adapter scale must be finite") }
        guard !attachments.contains(where: { $0.adapter === adapter }) else {
            throw LoraError.wrongState("adapter \(adapter.name) is already attached")
        }
        attachments.append(Attachment(adapter: adapter, scale: scale, enabled: true))
    }

    /// Detaches an adapter; a merged one is unmerged first.
    public func detach(_ adapter: Adapter) throws {
        guard let i = attachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw LoraError.wrongState("adapter \(adapter.name) is not attached")
        }
        if attachments[i].merged { try unmerge(adapter) }
        attachments.remove(at: i)
    }

    public func setScale(_ adapter: Adapter, _ scale: Float) throws {
        guard scale.isFinite else { throw LoraError.invalidArgument("adapter scale must be finite") }
        let i = try unmergedAttachment(adapter)
        attachments[i].scale = scale
    }

    public func setEnabled(_ adapter: Adapter, _ enabled: Bool) throws {
        let i = try unmergedAttachment(adapter)
        attachments[i].enabled = enabled
    }

    private func unmergedAttachment(_ adapter: Adapter) throws -> Int {
        guard let i = attachments.firstIndex(where: { $0.adapter === adapter }) else {
            throw LoraError.wrongState("adapter \(adapter.name) is not attached")
        }
        guard !attachments[i].merged else { throw LoraError.wrongState("adapter \(adapter.name) is merged; unmerge it first") }
        return i
    }

    func setMerged(_ i: Int, _ merged: Bool) { attachments[i].merged = merged }

    var activeLoRA: [ActiveLoRA] {
        attachments.filter { $0.enabled && $0.scale != 0 && !$0.merged }.map { ActiveLoRA(adapter: $0.adapter, scale: $0.scale) }
    }

    /// The largest rank among enabled adapters (0 without any).
    var maxActiveRank: Int { activeLoRA.flatMap { $0.adapter.slots.map(\.r) }.max() ?? 0 }

    func checkTokens(_ ids: UnsafeBufferPointer<TokenID>) throws {
        for (i, t) in ids.enumerated() where t < 0 || Int(t) >= config.vocabSize {
            throw LoraError.invalidArgument("token id \(t) at index \(i) is out of range (0 to \(config.vocabSize - 1))")
        }
    }

    /// Logits [T, vocab] for one sequence (no cache).
    public func logits(_ ids: [TokenID]) throws -> [Float] {
        guard !ids.isEmpty else { throw LoraError.invalidArgument("empty token sequence") }
        let session = try InferenceSession(model: self, batch: 1, capacity: ids.count, keepsCache: false)
        return try session.forward(ids, batch: 1, lastOnly: false)
    }

    /// As `logits(_:)`, written into `out` (exactly ids.count × vocab floats).
    public func logits(_ ids: [TokenID], into out: UnsafeMutableBufferPointer<Float>) throws {
        guard !ids.isEmpty else { throw LoraError.invalidArgument("empty token sequence") }
        let session = try InferenceSession(model: self, batch: 1, capacity: ids.count, keepsCache: false)
        try session.forward(ids, batch: 1, lastOnly: false, into: out)
    }

    /// Logits [B, T, vocab] for sequences of different lengths, padded to the
    /// longest. Left padding gives each row the positions it would have alone
    /// (as transformers' generate computes them); with right padding positions
    /// run from 0. Logits at padding positions are zeros.
    public func logits(batch: [[TokenID]], padding: Padding = .left) throws -> [Float] {
        guard !batch.isEmpty, batch.allSatisfy({ !$0.isEmpty }) else {
            throw LoraError.invalidArgument("empty batch or empty sequence")
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

/// Buffers for running a model: the KV cache for `batch` rows of up to
/// `capacity` positions, and scratch space. One session per thread.
public final class InferenceSession: @unchecked Sendable {
    public let model: Model
    public let batch: Int
    public let capacity: Int
    /// Positions already in the cache.
    public private(set) var length = 0

    let kCache: FloatBlock   // [layer, B, H, capacity, hd] (empty without a cache)
    let vCache: FloatBlock
    /// False: one forward call only, keys and values read from the layer's own
    /// projections (no cache to fill: the logits of a whole sequence).
    public let keepsCache: Bool
    /// Key mask [B, capacity]: 1 for real tokens, 0 for padding.
    let keyMask: FloatBlock
    /// Next position id per row (the count of real tokens so far).
    var nextPosition: [Int32]
    var maxTokens: Int
    var x, ln, qkv, att, proj, fc, probs, loraU: FloatBlock
    let probSlots: Int

    public init(model: Model, batch: Int, capacity: Int, keepsCache: Bool = true) throws {
        let c = model.config
        guard batch >= 1 else { throw LoraError.invalidArgument("batch must be at least 1") }
        guard capacity >= 1, capacity <= c.nPositions else {
            throw LoraError.invalidArgument("sequence capacity \(capacity) must be within 1...n_positions (\(c.nPositions))")
        }
        self.model = model
        self.batch = batch
        self.capacity = capacity
        // Cache sizes in floating point first: huge batches must be an error, not an overflow.
        let cacheFloats = Double(c.nLayer) * Double(batch) * Double(capacity) * Double(c.nEmbd)
        guard 8 * cacheFloats <= Double(FloatBlock.physicalMemory) else {
            throw LoraError.invalidArgument("a KV cache for batch \(batch) × \(capacity) positions does not fit the machine's memory")
        }
        let perLayer = batch * capacity * c.nEmbd
        self.keepsCache = keepsCache
        kCache = try FloatBlock(count: keepsCache ? c.nLayer * perLayer : 0)
        vCache = try FloatBlock(count: keepsCache ? c.nLayer * perLayer : 0)
        keyMask = try FloatBlock(count: batch * capacity)
        nextPosition = [Int32](repeating: 0, count: batch)
        maxTokens = 0
        x = try FloatBlock(count: 0); ln = x; qkv = x; att = x; proj = x; fc = x; loraU = x
        // One [capacity, capacity] attention scratch per worker (heads run in parallel).
        probSlots = max(1, min(computeThreads, 16))
        probs = try FloatBlock(count: probSlots * capacity * capacity)
    }

    /// Forgets the cache.
    public func reset() { length = 0; for b in 0..<batch { nextPosition[b] = 0 } }

    func ensureScratch(tokens n: Int) throws {
        guard n > maxTokens else { return }
        let c = model.config
        x = try FloatBlock(count: n * c.nEmbd)
        ln = try FloatBlock(count: n * c.nEmbd)
        qkv = try FloatBlock(count: n * 3 * c.nEmbd)
        att = try FloatBlock(count: n * c.nEmbd)
        proj = try FloatBlock(count: n * c.nEmbd)
        fc = try FloatBlock(count: n * c.innerSize)
        maxTokens = n
        loraU = try FloatBlock(count: 0)
    }

    /// Runs `ids` [batch, T] through the model after what is cached, appends
    /// to the cache, and writes logits into `logits`: [batch, T, vocab], or
    /// [batch, vocab] for the last position only (exactly that many floats).
    /// `attentionMask` [batch, T] marks padding (0).
    public func forward(_ ids: [TokenID], batch B: Int, attentionMask: [Int32]? = nil, lastOnly: Bool,
                        into logits: UnsafeMutableBufferPointer<Float>) throws {
        guard B == batch else { throw LoraError.invalidArgument("batch \(B) does not match the session's \(batch)") }
        guard !ids.isEmpty, ids.count % B == 0 else { throw LoraError.invalidArgument("token count \(ids.count) is not a multiple of the batch \(B)") }
        let T = ids.count / B
        guard keepsCache || length == 0 else {
            throw LoraError.invalidArgument("this session keeps no KV cache: it runs one forward call")
        }
        guard length + T <= capacity else {
            throw LoraError.invalidArgument("sequence of \(length + T) tokens exceeds the session capacity \(capacity) (n_positions \(model.config.nPositions))")
        }
        if let m = attentionMask, m.count != ids.count {
            throw LoraError.invalidArgument("attention mask has \(m.count) entries, expected \(ids.count)")
        }
        try ids.withUnsafeBufferPointer { try model.checkTokens($0) }
        let c = model.config
        let V = c.vocabSize
        let rows = lastOnly ? B : ids.count
        guard logits.count == rows * V else {
            throw LoraError.invalidArgument("logits buffer holds \(logits.count) floats, expected \(rows) × \(V)")
        }
        var positions = [Int32](repeating: 0, count: ids.count)
        for b in 0..<B {
            for t in 0..<T {
                let real = attentionMask.map { $0[b * T + t] != 0 } ?? true
                keyMask.base[b * capacity + length + t] = real ? 1 : 0
                // As transformers: cumsum(mask) - 1, and 1 at padding.
                positions[b * T + t] = real ? nextPosition[b] : 1
                if real { nextPosition[b] += 1 }
            }
        }
        try ensureScratch(tokens: B * T)
        try ids.withUnsafeBufferPointer { idp in
            try positions.withUnsafeBufferPointer { pp in
                guard let i = idp.baseAddress, let p = pp.baseAddress, let o = logits.baseAddress else { return }
                try run(ids: i, positions: p, B: B, T: T, lastOnly: lastOnly, logits: o)
            }
        }
        length += T
    }

    /// As `forward(_:batch:attentionMask:lastOnly:into:)`, returning the logits.
    public func forward(_ ids: [TokenID], batch B: Int, attentionMask: [Int32]? = nil, lastOnly: Bool) throws -> [Float] {
        guard B >= 1, ids.count % B == 0 else { throw LoraError.invalidArgument("token count \(ids.count) is not a multiple of the batch \(B)") }
        let count = (lastOnly ? B : ids.count) * model.config.vocabSize
        // Uninitialised: every entry is written by the head's product.
        return try [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            try forward(ids, batch: B, attentionMask: attentionMask, lastOnly: lastOnly, into: buf)
            initialized = count
        }
    }

    private func run(ids: UnsafePointer<TokenID>, positions: UnsafePointer<Int32>, B: Int, T: Int, lastOnly: Bool, logits: FloatPtr) throws {
        let c = model.config
        let w = model.weights
        let C = c.nEmbd
        let n = B * T
        let eps = Float(c.layerNormEpsilon)
        let past = length
        let L = past + T
        let x = self.x.base, ln = self.ln.base
        let anyPadding = (0..<B).contains { b in (0..<L).contains { keyMask.base[b * capacity + $0] == 0 } }
        let rank = model.maxActiveRank
        if loraU.count < n * rank { loraU = try FloatBlock(count: n * rank) }
        let lora = rank == 0 ? LoRAContext.none
            : LoRAContext(active: model.activeLoRA, scratch: loraU.base, saveU: nil, dropout: nil, trainable: nil)
        let acts = LayerActs(input: x, ln1: ln, ln1Mean: nil, ln1Rstd: nil, qkv: qkv.base, att: att.base,
                             probs: probs.base, probsSlots: probSlots, lse: nil, res2: x, ln2: ln, ln2Mean: nil, ln2Rstd: nil,
                             fcPre: fc.base, fcAct: fc.base, res3: x, proj: proj.base)
        let mask = keyMask.base, cap = capacity
        let keyMaskOf: ((Int) -> ConstFloatPtr?)? = anyPadding ? { b in UnsafePointer(mask + b * cap) } : nil

        embeddingForward(out: x, ids: ids, positions: positions, wte: w.wte, wpe: w.wpe, n: n, C: C)
        for l in 0..<c.nLayer {
            let perLayer = batch * capacity * C
            model.layerForward(l, acts, B: B, T: T, past: past,
                               kv: keepsCache ? .cache(k: kCache.base + l * perLayer, v: vCache.base + l * perLayer, capacity: capacity) : .inline,
                               keyMask: keyMaskOf, lora: lora)
        }
        let V = c.vocabSize
        if lastOnly {
            for b in 0..<B {
                layerNormForward(out: ln + b * C, mean: nil, rstd: nil, inp: x + (b * T + T - 1) * C,
                                 weight: w.lnfW, bias: w.lnfB, rows: 1, C: C, eps: eps)
            }
            if B == 1 {
                gemv(transA: false, rows: V, cols: C, alpha: 1, A: w.lmHead, lda: C, x: ln, beta: 0, y: logits)
            } else {
                gemm(transA: false, transB: true, M: B, N: V, K: C, alpha: 1, A: ln, lda: C, B: w.lmHead, ldb: C, beta: 0, C: logits, ldc: V)
            }
        } else {
            layerNormForward(out: ln, mean: nil, rstd: nil, inp: x, weight: w.lnfW, bias: w.lnfB, rows: n, C: C, eps: eps)
            gemm(transA: false, transB: true, M: n, N: V, K: C, alpha: 1, A: ln, lda: C, B: w.lmHead, ldb: C, beta: 0, C: logits, ldc: V)
        }
    }
}
