import Foundation

// The batched multi-adapter engine: many sequences, each with its own
// adapters and sampling, advanced together one step at a time (continuous
// batching). Each step gathers the new tokens of every running sequence
// (prompt chunks and single decode tokens mixed) into one [n, C] activation:
// the base products run once over all n rows, the LoRA products per segment
// of rows that share an adapter set, attention per sequence against its own
// slot of the KV pool, and the LM head only for rows that need logits.

/// The engine's sizes, fixed at creation.
public struct EngineParams: Sendable, Equatable {
    /// Sequences running at once (KV-cache slots). Requests beyond it wait in a queue.
    public var maxSequences = 16
    /// New tokens per step (prompt chunks plus decode tokens); at least maxSequences.
    public var maxTokensPerStep = 512
    /// Positions per sequence (prompt + new tokens); 0 means the model's n_positions.
    public var contextPerSequence = 0

    public init() {}
}

/// One adapter of a request, with its scale (as `Model.attach(_:scale:)`).
public struct AdapterUse: Sendable {
    public let adapter: Adapter
    public let scale: Float
    public init(_ adapter: Adapter, scale: Float = 1) { self.adapter = adapter; self.scale = scale }
}

/// A request: a prompt, its adapters (applied in order), its sampling.
public struct EngineRequest: @unchecked Sendable {
    public var prompt: [TokenID]
    public var adapters: [AdapterUse]
    public var params: SamplingParams
    /// Called on the stepping thread for each new token with its text piece;
    /// `.stop` ends the request (stop reason `.callback`). It may call
    /// `submit`, `cancel` and `state`, not `step`.
    public var onToken: ((TokenID, String) -> CallbackAction)?
    /// Called on the stepping thread with the model's logits row (the
    /// vocabulary's raw scores, before repetition penalty and temperature)
    /// for each new token, just before it is picked: what a server needs
    /// for log-probabilities. The row is only valid during the call.
    public var onLogits: ((UnsafeBufferPointer<Float>) -> Void)?

    public init(
        prompt: [TokenID], adapters: [AdapterUse] = [], params: SamplingParams = SamplingParams(),
        onToken: ((TokenID, String) -> CallbackAction)? = nil
    ) {
        self.prompt = prompt
        self.adapters = adapters
        self.params = params
        self.onToken = onToken
    }
}

public enum RequestState: Int32, Sendable {
    /// Waiting for a free sequence slot.
    case queued = 0
    /// In the batch (prefill or decode).
    case running = 1
    /// Ended by a stop rule, by its callback or by an error (see the result's stop reason).
    case finished = 2
    /// Ended by `cancel`.
    case cancelled = 3
}

/// What a request has done so far.
public struct RequestInfo: Sendable {
    public var state: RequestState
    /// Tokens generated so far.
    public var tokenCount: Int
    /// Set once the request has ended; a cancelled one has its tokens so far and stop reason `.callback`.
    public var result: GenerationResult?
    /// Why it failed, for a request that ended with stop reason `.error`.
    public var error: (any Error)?
}

/// What one step did.
public struct EngineStepReport: Sendable {
    /// Requests that got a new token in this step.
    public var produced: [Int64] = []
    /// Requests that ended in this step (finished or cancelled).
    public var finished: [Int64] = []
    /// Rows (tokens) the step's forward pass ran.
    public var rows = 0
}

/// The batched multi-adapter engine.
///
/// Thread rules: `submit`, `cancel` and `state` may be called from any
/// thread at any time (they take the engine's lock briefly); `step` and
/// `runUntilDone` run on one thread at a time: a second concurrent caller,
/// or a token callback calling them, gets `LoRAError.wrongState`. Token
/// callbacks run on the stepping thread, without the lock held.
///
/// Adapters: a request keeps strong references to its adapters until it
/// ends, so an adapter released by its owner meanwhile stays alive for the
/// requests using it. Adapters are read-only while used: training or loading
/// into one a running request uses is not allowed (as for `Model`). The
/// engine applies only each request's adapters; adapters attached to the
/// model with `attach` are ignored, merged ones are part of the base weights.
/// The model must not be changed (merge, unmerge, training) while requests
/// are queued or run (a DoRA adapter's norms are taken at submission).
public final class Engine: @unchecked Sendable {
    public let model: Model
    public let params: EngineParams
    /// Positions per sequence.
    public let context: Int

    // Shared state, under `lock`.
    private let lock = NSLock()
    private var nextID: Int64 = 1
    private var queue: [ActiveSequence] = []
    private var records: [Int64: Record] = [:]
    private var stepping = false
    /// The number of each adapter set (grouping rows by set in a step) and
    /// how many queued or running requests use it: a set is forgotten when
    /// its last request ends, so a long-running engine (a server) does not
    /// grow with every distinct set and scale it has seen.
    private var setIDs: [[SetMember]: Int] = [:]
    private var setUses: [Int: (key: [SetMember], count: Int, prepared: PreparedSet)] = [:]
    private var nextSetID = 0

    private struct PreparedSet {
        let active: [ActiveLoRA]
        let layerNorms: [SavedModule.Kind: LayerNormOverride]
    }

    /// An adapter of a set, by identity. A live set's adapters are held (by
    /// its requests and its PreparedSet), so no later adapter can reuse an
    /// identifier while the set is known.
    private struct SetMember: Hashable {
        let adapter: ObjectIdentifier
        let scale: UInt32
    }

    // Owned by the stepping thread.
    private var running: [ActiveSequence] = []
    private var freeSlots: [Int]
    private let kPool: ByteBlock, vPool: ByteBlock  // [layer, slot, H, context, hd] in kvCacheDType
    /// The model's kvCacheDType when the engine was created.
    public let kvCacheDType: WeightDType
    private let x, ln, qkv, att, proj, fc, probs: FloatBlock
    private var loraU: FloatBlock
    /// The largest rank among this step's segments: loraU's floats per row.
    private var stepMaxRank = 0
    private let logits: FloatBlock  // [maxSequences, V]
    private var rowLogits: [Float]
    private let probSlots: Int
    private var ids: [TokenID], positions: [Int32]
    private var runs: [SequenceRows]
    private var segments: [LoRASegment]
    private var order: [ActiveSequence]
    private var headRows: [(sequence: ActiveSequence, row: Int)]

    /// Tests: sees each row of logits before sampling.
    var logitsHook: ((Int64, [Float]) -> Void)?

    private struct Record {
        var state: RequestState
        var tokenCount = 0
        var result: GenerationResult?
        var error: (any Error)?
        /// Set by cancel while running: the stepping thread ends the sequence.
        var cancelRequested = false
    }

    private final class ActiveSequence {
        let id: Int64
        let prompt: [TokenID]
        let active: [ActiveLoRA]
        let layerNorms: [SavedModule.Kind: LayerNormOverride]
        /// The adapter set's number: rows with equal numbers share a segment.
        let setID: Int
        /// Rows in the step being planned.
        var take = 0
        let maxRank: Int
        let onToken: ((TokenID, String) -> CallbackAction)?
        let onLogits: ((UnsafeBufferPointer<Float>) -> Void)?
        var generation: GenerationState
        /// Set when its token could not be decoded (stop reason `.error`).
        var failure: (any Error)?
        var slot = -1
        /// Positions in the cache.
        var cached = 0
        /// The last picked token, fed in the next step (decode).
        var pending: TokenID?

        init(
            id: Int64, request: EngineRequest, active: [ActiveLoRA], layerNorms: [SavedModule.Kind: LayerNormOverride],
            setID: Int, generation: GenerationState
        ) {
            self.id = id
            prompt = request.prompt
            self.active = active
            self.layerNorms = layerNorms
            self.setID = setID
            maxRank = active.map(\.adapter.maxRank).max() ?? 0
            onToken = request.onToken
            onLogits = request.onLogits
            self.generation = generation
        }
    }

    public init(model: Model, params: EngineParams = EngineParams()) throws {
        let c = model.config
        guard params.maxSequences >= 1 else { throw LoRAError.invalidArgument("max_sequences must be at least 1") }
        guard params.maxTokensPerStep >= params.maxSequences else {
            throw LoRAError.invalidArgument(
                "max_tokens_per_step (\(params.maxTokensPerStep)) must be at least max_sequences (\(params.maxSequences)): every running sequence decodes one token a step"
            )
        }
        guard params.contextPerSequence >= 0, params.contextPerSequence <= c.nPositions else {
            throw LoRAError.invalidArgument(
                "context_per_sequence \(params.contextPerSequence) must be within 0...n_positions (\(c.nPositions))")
        }
        let ctx = params.contextPerSequence == 0 ? c.nPositions : params.contextPerSequence
        guard ctx >= 2 else { throw LoRAError.invalidArgument("context_per_sequence must be at least 2") }
        // Sizes in floating point first: huge pools must be an error, not an overflow.
        let poolFloats = 2 * Double(c.nLayer) * Double(params.maxSequences) * Double(ctx) * Double(c.nEmbd)
        let n = Double(params.maxTokensPerStep)
        let stepFloats = n * Double(6 * c.nEmbd + c.innerSize) + Double(params.maxSequences) * Double(c.vocabSize)
        let kvDType = model.kvCacheDType  // read once: the check and the pool use the same
        guard Double(kvDType.weightBytes) * poolFloats + 4 * stepFloats <= Double(FloatBlock.physicalMemory) else {
            throw LoRAError.invalidArgument(
                "an engine of \(params.maxSequences) sequences × \(ctx) positions and \(params.maxTokensPerStep) tokens a step does not fit the machine's memory"
            )
        }
        self.model = model
        self.params = params
        context = ctx
        kvCacheDType = kvDType
        let layerBytes = params.maxSequences * ctx * c.nEmbd * kvCacheDType.weightBytes
        kPool = try ByteBlock(count: c.nLayer * layerBytes)
        vPool = try ByteBlock(count: c.nLayer * layerBytes)
        let T = params.maxTokensPerStep
        x = try FloatBlock(count: T * c.nEmbd)
        (ln, att) = try Model.sharedPair(rows: T, c.nEmbd, c.nEmbd)
        proj = try FloatBlock(count: T * c.nEmbd)
        (qkv, fc) = try Model.sharedPair(rows: T, 3 * c.nEmbd, c.innerSize)
        probSlots = max(1, min(computeThreads, 16))
        probs = try FloatBlock(count: probSlots * min(T, ctx) * ctx)
        loraU = try FloatBlock(count: 0)
        logits = try FloatBlock(count: params.maxSequences * c.vocabSize)
        rowLogits = [Float](repeating: 0, count: c.vocabSize)
        freeSlots = Array((0..<params.maxSequences).reversed())
        ids = []; ids.reserveCapacity(T)
        positions = []; positions.reserveCapacity(T)
        runs = []; runs.reserveCapacity(params.maxSequences)
        segments = []; segments.reserveCapacity(params.maxSequences)
        order = []; order.reserveCapacity(params.maxSequences)
        headRows = []; headRows.reserveCapacity(params.maxSequences)
        running.reserveCapacity(params.maxSequences)
    }

    // MARK: - Any thread

    /// Validates a request and queues it; returns its id (ids start at 1).
    /// Errors: an empty prompt, a token out of range, a prompt that leaves no
    /// room for a new token in the context, invalid sampling, an adapter
    /// made for another model shape or a scale that is NaN or infinite.
    /// `max_new_tokens` beyond the context is truncated: the request ends
    /// with `.contextFull` when its sequence fills the context.
    public func submit(_ request: EngineRequest) throws -> Int64 {
        try request.params.validate()
        guard !request.prompt.isEmpty else { throw LoRAError.invalidArgument("empty prompt") }
        guard request.prompt.count < context else {
            throw LoRAError.invalidArgument(
                "prompt of \(request.prompt.count) tokens does not fit the engine's context of \(context) positions with room for a new token"
            )
        }
        try request.prompt.withUnsafeBufferPointer { try model.checkTokens($0) }
        var active: [ActiveLoRA] = []
        for use in request.adapters {
            try use.adapter.checkFits(model.config)
            guard use.scale.isFinite else { throw LoRAError.invalidArgument("adapter scale must be finite") }
            guard !active.contains(where: { $0.adapter === use.adapter }) else {
                throw LoRAError.invalidArgument("adapter \(use.adapter.name) is given twice")
            }
            // As Model.activeLoRA: a zero scale adds nothing.
            if use.scale != 0 { active.append(ActiveLoRA(adapter: use.adapter, scale: use.scale)) }
        }
        // Adapter sets are numbered by adapter identity and scale; a set's
        // DoRA factors and saved LayerNorms are found once, while it is live.
        let key = active.map { SetMember(adapter: ObjectIdentifier($0.adapter), scale: $0.scale.bitPattern) }
        lock.lock()
        let known = setIDs[key].flatMap { setUses[$0]?.prepared }
        lock.unlock()
        let prepared = try known ?? prepare(active)
        let generation = GenerationState(
            model: model, prompt: request.prompt, params: request.params,
            limit: min(context, model.config.nPositions))
        lock.lock()
        defer { lock.unlock() }
        let id = nextID
        nextID += 1
        if request.params.maxNewTokens == 0 {
            records[id] = Record(state: .finished, result: GenerationResult(tokens: [], text: "", stopReason: .maxNewTokens))
            return id
        }
        let setID: Int
        if let known = setIDs[key] {
            setID = known
        } else {
            setID = nextSetID
            nextSetID += 1
            setIDs[key] = setID
        }
        setUses[setID, default: (key, 0, prepared)].count += 1
        records[id] = Record(state: .queued)
        let p = setUses[setID]!.prepared
        queue.append(
            ActiveSequence(id: id, request: request, active: p.active, layerNorms: p.layerNorms, setID: setID, generation: generation))
        return id
    }

    /// A set's adapters as a step runs them: DoRA adapters with their
    /// factors (norms of the base weight plus the scaled update), the
    /// modules_to_save LayerNorms. Error: two adapters saving one module.
    private func prepare(_ active: [ActiveLoRA]) throws -> PreparedSet {
        PreparedSet(
            active: try model.withDoRAFactors(active), layerNorms: try LayerNormOverride.overrides(active, training: nil))
    }

    /// A request of set `setID` ended (under the lock): the set is forgotten
    /// with its last request.
    private func releaseSet(_ setID: Int) {
        guard var u = setUses[setID] else { return }
        u.count -= 1
        if u.count > 0 {
            setUses[setID] = u
        } else {
            setUses[setID] = nil
            setIDs[u.key] = nil
        }
    }

    /// Adapter sets the engine numbers now (queued or running requests' sets).
    package var liveAdapterSets: Int {
        lock.lock()
        defer { lock.unlock() }
        return setIDs.count
    }

    /// Cancels a queued or running request: it ends before its next token
    /// (state `.cancelled`, its tokens so far kept, stop reason `.callback`).
    /// Called while another thread steps, the request ends when that step
    /// returns (its state reads `.running` until then). Errors: an unknown
    /// id, or a request that already ended (`wrongState`).
    public func cancel(_ id: Int64) throws {
        lock.lock()
        defer { lock.unlock() }
        guard var r = records[id] else { throw LoRAError.invalidArgument("no request with id \(id)") }
        switch r.state {
        case .finished, .cancelled:
            throw LoRAError.wrongState("request \(id) has already ended")
        case .queued:
            if let s = queue.first(where: { $0.id == id }) { releaseSet(s.setID) }
            queue.removeAll { $0.id == id }
            r.state = .cancelled
            r.result = GenerationResult(tokens: [], text: "", stopReason: .callback)
            records[id] = r
        case .running:
            guard !r.cancelRequested else { throw LoRAError.wrongState("request \(id) is already being cancelled") }
            records[id]?.cancelRequested = true
            // No step runs: the stepping state is ours while the lock is held.
            if !stepping, let s = running.first(where: { $0.id == id }) {
                var ignored: [Int64] = []
                end(s, s.generation.result(.callback), finished: &ignored)
                running.removeAll { $0.id == id }
            }
        }
    }

    /// A request's state. Error: an unknown id.
    public func state(_ id: Int64) throws -> RequestInfo {
        lock.lock()
        defer { lock.unlock() }
        guard let r = records[id] else { throw LoRAError.invalidArgument("no request with id \(id)") }
        return RequestInfo(state: r.state, tokenCount: r.tokenCount, result: r.result, error: r.error)
    }

    /// Forgets an ended request's record (its state and result). Errors: an
    /// unknown id, a request still queued or running (`wrongState`).
    public func release(_ id: Int64) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let r = records[id] else { throw LoRAError.invalidArgument("no request with id \(id)") }
        guard r.state == .finished || r.state == .cancelled else {
            throw LoRAError.wrongState("request \(id) has not ended")
        }
        records[id] = nil
    }

    /// Requests queued or running.
    public var pendingCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return queue.count + running.count
    }

    // MARK: - The stepping thread

    /// Runs one batched step: admits queued requests into free slots, runs
    /// the new tokens of every running sequence through the model, samples
    /// and streams one token for each sequence whose prompt is done.
    /// Returns an empty report when nothing runs. Errors: `wrongState` when
    /// another thread (or a token callback) is stepping. A sampled token the
    /// tokenizer cannot decode (a model vocabulary larger than the
    /// tokenizer's) fails only its request: it ends in this step (in
    /// `finished`, stop reason `.error`, the error in its `RequestInfo`), as
    /// a callback's stop ends only its own.
    public func step() throws -> EngineStepReport {
        lock.lock()
        guard !stepping else {
            lock.unlock()
            throw LoRAError.wrongState("another thread (or a token callback) is already stepping this engine")
        }
        stepping = true
        var report = EngineStepReport()
        // Queued requests take the free slots.
        while !freeSlots.isEmpty, !queue.isEmpty {
            let s = queue.removeFirst()
            s.slot = freeSlots.removeLast()
            records[s.id]?.state = .running
            running.append(s)
        }
        lock.unlock()
        var ended: [(ActiveSequence, GenerationResult)] = []
        do {
            try runStep(&report, ended: &ended)
        } catch {
            closeStep(&report, ended: ended)
            throw error
        }
        closeStep(&report, ended: ended)
        return report
    }

    /// The step's work outside the lock: plan, forward, sample and stream.
    private func runStep(_ report: inout EngineStepReport, ended: inout [(ActiveSequence, GenerationResult)]) throws {
        try plan()
        report.rows = ids.count
        if ids.isEmpty { return }
        forward()
        // Sample and stream, in the batch's row order.
        let V = model.config.vocabSize
        for (row, (s, _)) in headRows.enumerated() {
            lock.lock()
            let cancelled = records[s.id]?.cancelRequested == true
            lock.unlock()
            if cancelled { continue }
            rowLogits.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: logits.base + row * V, count: V) }
            logitsHook?(s.id, rowLogits)
            if let onLogits = s.onLogits { rowLogits.withUnsafeBufferPointer { onLogits($0) } }
            let next = s.generation.pick(&rowLogits)
            s.pending = next
            report.produced.append(s.id)
            let taken: (piece: String, stop: StopReason?)
            do { taken = try s.generation.append(next) } catch {
                // A token the tokenizer cannot decode (a model vocabulary larger than
                // the tokenizer's): that request fails and ends; the others go on.
                s.failure = error
                ended.append((s, s.generation.result(.error)))
                continue
            }
            var stop = taken.stop
            if let onToken = s.onToken, onToken(next, taken.piece) == .stop { stop = .callback }
            if let stop { ended.append((s, s.generation.result(stop))) }
        }
    }

    /// Under the lock: requests that ended, and those cancelled meanwhile, leave; stepping ends.
    private func closeStep(_ report: inout EngineStepReport, ended: [(ActiveSequence, GenerationResult)]) {
        lock.lock()
        defer { lock.unlock() }
        for id in report.produced { records[id]?.tokenCount += 1 }
        for (s, result) in ended { end(s, result, finished: &report.finished) }
        for s in running where records[s.id]?.cancelRequested == true {
            end(s, s.generation.result(.callback), finished: &report.finished)
        }
        running.removeAll { records[$0.id]?.state != .running }
        stepping = false
    }

    /// Ends a running sequence (under the lock): records its result (a
    /// requested cancellation wins), frees its slot. The caller removes it
    /// from `running`.
    private func end(_ s: ActiveSequence, _ result: GenerationResult, finished: inout [Int64]) {
        guard var r = records[s.id], r.state == .running else { return }
        r.state = r.cancelRequested ? .cancelled : .finished
        r.cancelRequested = false
        r.result = r.state == .cancelled ? s.generation.result(.callback) : result
        r.error = r.state == .cancelled ? nil : s.failure
        records[s.id] = r
        freeSlots.append(s.slot)
        releaseSet(s.setID)
        finished.append(s.id)
    }

    /// Steps until no request is queued or running.
    public func runUntilDone() throws {
        while pendingCount > 0 { _ = try step() }
    }

    /// Runs requests to their end together and returns their results in
    /// order (with the other requests already in the engine); a failed
    /// request's result has stop reason `.error`.
    public func generate(_ requests: [EngineRequest]) throws -> [GenerationResult] {
        let ids = try requests.map { try submit($0) }
        try runUntilDone()
        return try ids.map { id in
            let r = try state(id).result ?? GenerationResult(tokens: [], text: "", stopReason: .callback)
            try release(id)
            return r
        }
    }

    /// This step's rows: one decode token per decoding sequence, then prompt
    /// chunks in admission order while the step's token budget lasts; rows
    /// grouped by adapter set so each set is one segment.
    private func plan() throws {
        ids.removeAll(keepingCapacity: true)
        positions.removeAll(keepingCapacity: true)
        runs.removeAll(keepingCapacity: true)
        segments.removeAll(keepingCapacity: true)
        order.removeAll(keepingCapacity: true)
        headRows.removeAll(keepingCapacity: true)
        var budget = params.maxTokensPerStep
        // Decode tokens first (the budget holds one per sequence), then prompt chunks in admission order.
        for s in running {
            s.take = s.pending != nil ? 1 : 0
            budget -= s.take
        }
        for s in running where s.pending == nil {
            s.take = max(0, min(s.prompt.count - s.cached, budget))
            budget -= s.take
        }
        for s in running where s.take > 0 { order.append(s) }
        // Rows of one adapter set together (stable): each set is one segment.
        order.sort { ($0.setID, $0.id) < ($1.setID, $1.id) }
        var maxRank = 0
        var lastKey = -1
        for s in order {
            let count = s.take
            let start = ids.count
            if let t = s.pending {
                ids.append(t)
                positions.append(Int32(s.cached))
            } else {
                ids.append(contentsOf: s.prompt[s.cached..<(s.cached + count)])
                for p in s.cached..<(s.cached + count) { positions.append(Int32(p)) }
            }
            runs.append(SequenceRows(start: start, count: count, past: s.cached, slot: s.slot))
            let needsLogits = s.pending != nil || s.cached + count == s.prompt.count
            if needsLogits { headRows.append((s, start + count - 1)) }
            if lastKey == s.setID {
                segments[segments.count - 1].count += count
            } else {
                segments.append(LoRASegment(start: start, count: count, active: s.active, layerNorms: s.layerNorms))
                lastKey = s.setID
            }
            maxRank = max(maxRank, s.maxRank)
        }
        for s in order { s.cached += s.take; s.pending = nil }
        if loraU.count < ids.count * maxRank { loraU = try FloatBlock(count: params.maxTokensPerStep * maxRank) }
        stepMaxRank = maxRank
    }

    /// The batched forward of the planned rows, then the head's logits for headRows.
    private func forward() {
        let c = model.config
        let w = model.weights
        let C = c.nEmbd
        let V = c.vocabSize
        let n = ids.count
        let acts = LayerActs(
            input: x.base, ln1: ln.base, ln1Mean: nil, ln1Rstd: nil, qkv: qkv.base, att: att.base,
            probs: probs.base, probsSlots: probSlots, lse: nil, res2: x.base, ln2: ln.base, ln2Mean: nil,
            ln2Rstd: nil, fcPre: fc.base, fcAct: fc.base, res3: x.base, proj: proj.base)
        let anyLoRA = segments.contains { !$0.active.isEmpty || !$0.layerNorms.isEmpty }
        var lora = LoRAContext.none
        if anyLoRA {
            lora = LoRAContext(active: [], scratch: loraU.base, training: nil, segments: segments)
            lora.segmentScratchStride = stepMaxRank
        }
        ids.withUnsafeBufferPointer { idp in
            positions.withUnsafeBufferPointer { pp in
                embeddingForward(out: x.base, ids: idp.baseAddress!, positions: pp.baseAddress!, wte: w.wte, wpe: w.wpe, n: n, C: C)
            }
            lora.embeddingForward(ids: idp.baseAddress!, x: x.base, n: n)
        }
        let layerBytes = params.maxSequences * context * C * kvCacheDType.weightBytes
        runs.withUnsafeBufferPointer { r in
            for l in 0..<c.nLayer {
                model.layerForward(
                    l, acts, B: 1, T: n, past: 0,
                    kv: .sequences(
                        r,
                        KVLayer(
                            k: kPool.base + l * layerBytes, v: vPool.base + l * layerBytes, capacity: context,
                            dtype: kvCacheDType)),
                    keyMask: nil, lora: lora)
            }
        }
        let m = headRows.count
        let eps = Float(c.layerNormEpsilon)
        for (i, h) in headRows.enumerated() {
            let o = h.sequence.layerNorms[.lnf]
            layerNormForward(
                out: ln.base + i * C, mean: nil, rstd: nil, inp: x.base + h.row * C,
                weight: o?.weight ?? UnsafePointer(w.lnfW), bias: o?.bias ?? UnsafePointer(w.lnfB), rows: 1, C: C, eps: eps)
        }
        baseMatmul(transW: true, M: m, N: V, K: C, A: ln.base, lda: C, W: w.lmHead, beta: 0, C: logits.base, ldc: V)
    }
}
