import Foundation

// Running a model: the KV cache, scratch buffers and the forward pass from
// token ids to logits.

/// Buffers for running a model: the KV cache for `batch` rows of up to
/// `capacity` positions, and scratch space. One session per thread: it is
/// not Sendable, so the compiler keeps it from being shared.
public final class InferenceSession {
    public let model: Model
    public let batch: Int
    public let capacity: Int
    /// Positions already in the cache.
    public private(set) var length = 0

    /// [layer, B, H, capacity, hd] in kvCacheDType (empty without a cache).
    let kCache: ByteBlock
    let vCache: ByteBlock
    /// The model's kvCacheDType when the session was created.
    public let kvCacheDType: WeightDType
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
    /// DoRA: the enabled adapters with their factors, computed on the
    /// session's first call (or when the attachments or scales change):
    /// the weights and adapters must not change during a session.
    private var doraActive: (key: [ActiveKey], active: [ActiveLoRA])? = nil
    private var doraScratch: FloatBlock
    private struct ActiveKey: Equatable {
        let adapter: ObjectIdentifier
        let scale: Float
    }

    public init(model: Model, batch: Int, capacity: Int, keepsCache: Bool = true) throws {
        let c = model.config
        guard batch >= 1 else { throw LoRAError.invalidArgument("batch must be at least 1") }
        guard capacity >= 1, capacity <= c.nPositions else {
            throw LoRAError.invalidArgument("sequence capacity \(capacity) must be within 1...n_positions (\(c.nPositions))")
        }
        self.model = model
        self.batch = batch
        self.capacity = capacity
        // Cache sizes in floating point first: huge batches must be an error, not an overflow.
        let cacheFloats = Double(c.nLayer) * Double(batch) * Double(capacity) * Double(c.nEmbd)
        kvCacheDType = model.kvCacheDType
        guard 2 * Double(kvCacheDType.weightBytes) * cacheFloats <= Double(FloatBlock.physicalMemory) else {
            throw LoRAError.invalidArgument("a KV cache for batch \(batch) × \(capacity) positions does not fit the machine's memory")
        }
        let perLayer = batch * capacity * c.nEmbd
        self.keepsCache = keepsCache
        let cacheBytes = keepsCache ? c.nLayer * perLayer * kvCacheDType.weightBytes : 0
        kCache = try ByteBlock(count: cacheBytes)
        vCache = try ByteBlock(count: cacheBytes)
        keyMask = try FloatBlock(count: batch * capacity)
        nextPosition = [Int32](repeating: 0, count: batch)
        maxTokens = 0
        x = try FloatBlock(count: 0); ln = x; qkv = x; att = x; proj = x; fc = x; loraU = x
        // One [capacity, capacity] attention scratch per worker (heads run in parallel).
        probSlots = max(1, min(computeThreads, 16))
        probs = try FloatBlock(count: probSlots * capacity * capacity)
        doraScratch = try FloatBlock(count: 0)
    }

    /// The pass's adapters: the model's enabled ones, DoRA factors computed once per session.
    private func passLoRA(rows n: Int) throws -> LoRAContext {
        let rank = model.maxActiveRank
        if rank == 0 { return LoRAContext.none }
        if loraU.count < n * rank { loraU = try FloatBlock(count: n * rank) }
        var active = model.activeLoRA
        guard active.contains(where: { $0.adapter.config.useDoRA }) else {
            var ctx = LoRAContext(active: active, scratch: loraU.base, training: nil)
            ctx.layerNorms = try LayerNormOverride.overrides(active, training: nil)
            return ctx
        }
        let key = active.map { ActiveKey(adapter: ObjectIdentifier($0.adapter), scale: $0.scale) }
        if let cached = doraActive, cached.key == key {
            active = cached.active
        } else {
            active = try model.withDoRAFactors(active)
            doraActive = (key, active)
        }
        let c = model.config
        let maxOut = max(3 * c.nEmbd, c.innerSize)
        let count = LoRAContext.doraScratchCount(active, rows: n, maxOut: maxOut)
        if doraScratch.count < count { doraScratch = try FloatBlock(count: count) }
        var ctx = LoRAContext(active: active, scratch: loraU.base, training: nil)
        ctx.layerNorms = try LayerNormOverride.overrides(active, training: nil)
        ctx.doraScratch = doraScratch.base
        ctx.doraArea = n * maxOut
        return ctx
    }

    /// Forgets the cache.
    public func reset() { length = 0; doraActive = nil; for b in 0..<batch { nextPosition[b] = 0 } }

    func ensureScratch(tokens n: Int) throws {
        guard n > maxTokens else { return }
        let c = model.config
        x = try FloatBlock(count: n * c.nEmbd)
        (ln, att) = try Model.sharedPair(rows: n, c.nEmbd, c.nEmbd)
        proj = try FloatBlock(count: n * c.nEmbd)
        (qkv, fc) = try Model.sharedPair(rows: n, 3 * c.nEmbd, c.innerSize)
        maxTokens = n
        loraU = try FloatBlock(count: 0)
    }

    /// Runs `ids` [batch, T] through the model after what is cached, appends
    /// to the cache, and writes logits into `logits`: [batch, T, vocab], or
    /// [batch, vocab] for the last position only (exactly that many floats).
    /// `attentionMask` [batch, T] marks padding (0).
    public func forward(
        _ ids: [TokenID], batch B: Int, attentionMask: [Int32]? = nil, lastOnly: Bool,
        into logits: UnsafeMutableBufferPointer<Float>
    ) throws {
        guard B == batch else { throw LoRAError.invalidArgument("batch \(B) does not match the session's \(batch)") }
        guard !ids.isEmpty, ids.count % B == 0 else {
            throw LoRAError.invalidArgument("token count \(ids.count) is not a multiple of the batch \(B)")
        }
        let T = ids.count / B
        guard keepsCache || length == 0 else {
            throw LoRAError.invalidArgument("this session keeps no KV cache: it runs one forward call")
        }
        guard length + T <= capacity else {
            throw LoRAError.invalidArgument(
                "sequence of \(length + T) tokens exceeds the session capacity \(capacity) (n_positions \(model.config.nPositions))")
        }
        if let m = attentionMask, m.count != ids.count {
            throw LoRAError.invalidArgument("attention mask has \(m.count) entries, expected \(ids.count)")
        }
        try ids.withUnsafeBufferPointer { try model.checkTokens($0) }
        let c = model.config
        let V = c.vocabSize
        let rows = lastOnly ? B : ids.count
        guard logits.count == rows * V else {
            throw LoRAError.invalidArgument("logits buffer holds \(logits.count) floats, expected \(rows) × \(V)")
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
        guard B >= 1, ids.count % B == 0 else {
            throw LoRAError.invalidArgument("token count \(ids.count) is not a multiple of the batch \(B)")
        }
        let count = (lastOnly ? B : ids.count) * model.config.vocabSize
        // Uninitialised: every entry is written by the head's product.
        return try [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            try forward(ids, batch: B, attentionMask: attentionMask, lastOnly: lastOnly, into: buf)
            initialized = count
        }
    }

    private func run(ids: UnsafePointer<TokenID>, positions: UnsafePointer<Int32>, B: Int, T: Int, lastOnly: Bool, logits: FloatPtr) throws
    {
        let c = model.config
        let w = model.weights
        let C = c.nEmbd
        let n = B * T
        let eps = Float(c.layerNormEpsilon)
        let past = length
        let L = past + T
        let x = self.x.base
        let ln = self.ln.base
        let anyPadding = (0..<B).contains { b in (0..<L).contains { keyMask.base[b * capacity + $0] == 0 } }
        let lora = try passLoRA(rows: n)
        let acts = LayerActs(
            input: x, ln1: ln, ln1Mean: nil, ln1Rstd: nil, qkv: qkv.base, att: att.base,
            probs: probs.base, probsSlots: probSlots, lse: nil, res2: x, ln2: ln, ln2Mean: nil, ln2Rstd: nil,
            fcPre: fc.base, fcAct: fc.base, res3: x, proj: proj.base)
        let mask = keyMask.base
        let cap = capacity
        let keyMaskOf: ((Int) -> ConstFloatPtr?)? = anyPadding ? { b in UnsafePointer(mask + b * cap) } : nil

        embeddingForward(out: x, ids: ids, positions: positions, wte: w.wte, wpe: w.wpe, n: n, C: C)
        lora.embeddingForward(ids: ids, x: x, n: n)
        for l in 0..<c.nLayer {
            var kv = KVPlacement.inline
            if keepsCache {
                let layerBytes = batch * capacity * C * kvCacheDType.weightBytes
                kv = .cache(
                    KVLayer(
                        k: kCache.base + l * layerBytes, v: vCache.base + l * layerBytes, capacity: capacity, dtype: kvCacheDType))
            }
            model.layerForward(l, acts, B: B, T: T, past: past, kv: kv, keyMask: keyMaskOf, lora: lora)
        }
        let V = c.vocabSize
        let lnfW = lora.layerNorms[.lnf]?.weight ?? UnsafePointer(w.lnfW)
        let lnfB = lora.layerNorms[.lnf]?.bias ?? UnsafePointer(w.lnfB)
        if lastOnly {
            for b in 0..<B {
                layerNormForward(
                    out: ln + b * C, mean: nil, rstd: nil, inp: x + (b * T + T - 1) * C,
                    weight: lnfW, bias: lnfB, rows: 1, C: C, eps: eps)
            }
            baseMatmul(transW: true, M: B, N: V, K: C, A: ln, lda: C, W: w.lmHead, beta: 0, C: logits, ldc: V)
        } else {
            layerNormForward(out: ln, mean: nil, rstd: nil, inp: x, weight: lnfW, bias: lnfB, rows: n, C: C, eps: eps)
            baseMatmul(transW: true, M: n, N: V, K: C, A: ln, lda: C, W: w.lmHead, beta: 0, C: logits, ldc: V)
        }
    }
}
