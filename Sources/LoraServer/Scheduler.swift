import CoreMetrics
import Foundation
import LoRA

/// The log-probability of a generated token and the `count` most likely
/// tokens at its position (natural log, from the model's raw logits).
struct TokenLogprobs: Sendable {
    var logprob: Float
    var top: [Candidate]

    struct Candidate: Sendable {
        var token: TokenID
        var logprob: Float
    }
}

/// What the scheduler tells a request's handler, for choice `index`.
enum CompletionEvent: Sendable {
    case token(index: Int, token: TokenID, piece: String, logprobs: TokenLogprobs?)
    /// The choice ended: its result, and whether it was cancelled (client gone, shutdown).
    case finished(index: Int, result: GenerationResult?, cancelled: Bool)
}

/// One choice to generate.
struct ChoiceRequest: @unchecked Sendable {
    var prompt: [TokenID]
    var adapters: [AdapterUse]
    var params: SamplingParams
    /// Top log-probabilities per token (nil: none computed).
    var logprobs: Int?
}

/// The single owner of the engine's stepping: a dedicated thread (never a
/// NIO event loop, never a Swift concurrency worker) runs `Engine.step` while
/// requests are pending and sleeps otherwise. Handlers submit from any
/// thread (the engine allows submit and cancel there) and hear tokens
/// through an `AsyncStream`, whose buffer is unbounded so a slow reader
/// never holds up the stepping thread or the other streams.
final class Scheduler: @unchecked Sendable {
    let engine: Engine
    let maxQueued: Int
    let metrics: ServerMetrics

    private let cond = NSCondition()
    private var stopping = false
    private var draining = false
    private var thread: Thread?
    private var done = false
    private var tracked: [Int64: Tracked] = [:]

    private final class Tracked {
        let index: Int
        let continuation: AsyncStream<CompletionEvent>.Continuation
        let submitted = ContinuousClock.now
        var firstToken: ContinuousClock.Instant?
        var tokens = 0
        init(index: Int, continuation: AsyncStream<CompletionEvent>.Continuation) {
            self.index = index
            self.continuation = continuation
        }
    }

    init(engine: Engine, maxQueued: Int, metrics: ServerMetrics) {
        self.engine = engine
        self.maxQueued = maxQueued
        self.metrics = metrics
        metrics.kvSlotsTotal.record(engine.params.maxSequences)
    }

    func start() {
        let t = Thread { [self] in loop() }
        t.name = "lora-scheduler"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Submits the choices of one HTTP request, all or none: 429 when the
    /// engine's slots plus the queue cannot take them all, 503 while draining.
    /// Returns the engine ids (for `cancel`) and the stream of their events.
    func submit(_ choices: [ChoiceRequest]) throws(APIError) -> (ids: [Int64], events: AsyncStream<CompletionEvent>) {
        let (events, continuation) = AsyncStream<CompletionEvent>.makeStream(bufferingPolicy: .unbounded)
        cond.lock()
        defer { cond.unlock() }
        if draining || stopping {
            throw APIError(.serviceUnavailable, "the server is shutting down", type: "server_error", code: "shutting_down", retryAfter: 5)
        }
        let capacity = engine.params.maxSequences + maxQueued
        guard engine.pendingCount + choices.count <= capacity else {
            metrics.rejected.increment()
            throw APIError(
                .tooManyRequests,
                "the server is at capacity (\(engine.params.maxSequences) running and \(maxQueued) queued sequences); retry later",
                type: "server_error", code: "server_busy", retryAfter: 1)
        }
        var ids: [Int64] = []
        for (index, choice) in choices.enumerated() {
            let box = LogprobBox(count: choice.logprobs)
            var request = EngineRequest(prompt: choice.prompt, adapters: choice.adapters, params: choice.params)
            if choice.logprobs != nil { request.onLogits = { box.take($0) } }
            let t = Tracked(index: index, continuation: continuation)
            request.onToken = { [weak self] token, piece in
                self?.produced(t, token: token, piece: piece, logprobs: box.logprobs(of: token))
                return .continue
            }
            do {
                let id = try engine.submit(request)
                ids.append(id)
                tracked[id] = t
            } catch {
                for id in ids { try? engine.cancel(id) }
                // Validated before: a failure here is a bug or a race; the client gets it as a 400.
                throw APIError(.badRequest, "\(error)")
            }
        }
        metrics.promptTokens.increment(by: Int64(choices.reduce(0) { $0 + $1.prompt.count }))
        updateGauges()
        cond.signal()
        return (ids, events)
    }

    /// Cancels choices (client gone): they end before their next token. Ended ones are ignored.
    func cancel(_ ids: [Int64]) {
        for id in ids { try? engine.cancel(id) }
        cond.lock()
        // A queued request, or a running one cancelled between steps, ends at
        // once and appears in no step's report: finish it here.
        finishEnded(among: ids)
        cond.signal()
        cond.unlock()
    }

    /// Under `cond`: finishes the tracked requests among `ids` that have ended.
    private func finishEnded<S: Sequence>(among ids: S) where S.Element == Int64 {
        for id in ids where tracked[id] != nil {
            guard let s = try? engine.state(id).state else { continue }
            if s == .finished || s == .cancelled { finish(id) }
        }
    }

    /// Called on the stepping thread for each token.
    private func produced(_ t: Tracked, token: TokenID, piece: String, logprobs: TokenLogprobs?) {
        if t.firstToken == nil {
            t.firstToken = .now
            metrics.timeToFirstToken.recordNanoseconds(t.submitted.duration(to: .now).nanoseconds)
        }
        t.tokens += 1
        metrics.generatedTokens.increment()
        t.continuation.yield(.token(index: t.index, token: token, piece: piece, logprobs: logprobs))
    }

    private func loop() {
        while true {
            cond.lock()
            while engine.pendingCount == 0 && !stopping { cond.wait() }
            if engine.pendingCount == 0 && stopping {
                done = true
                cond.broadcast()
                cond.unlock()
                return
            }
            cond.unlock()
            var ended: [Int64] = []
            do {
                ended = try engine.step().finished
            } catch {
                // Not expected (a token without text fails only its request, which
                // the step reports): requests that ended are found below.
            }
            cond.lock()
            for id in ended { finish(id) }
            // And any that ended outside a step's report (cancelled between steps, or the step threw).
            finishEnded(among: Array(tracked.keys))
            updateGauges()
            cond.unlock()
        }
    }

    /// Under `cond`: reports an ended request and forgets it.
    private func finish(_ id: Int64) {
        guard let t = tracked.removeValue(forKey: id) else { return }
        let info = try? engine.state(id)
        let result = info?.result
        let cancelled = info?.state == .cancelled
        if cancelled { metrics.cancelled.increment() }
        if let first = t.firstToken, t.tokens > 1 {
            let nanos = first.duration(to: .now).nanoseconds / Int64(t.tokens - 1)
            metrics.timePerOutputToken.recordNanoseconds(nanos)
        }
        try? engine.release(id)
        // The gauges first: a client that reads /metrics right after its
        // answer must not see its own request still running.
        updateGauges()
        t.continuation.yield(.finished(index: t.index, result: result, cancelled: cancelled))
    }

    private func updateGauges() {
        let pending = tracked.count
        let running = min(pending, engine.params.maxSequences)
        metrics.running.record(running)
        metrics.waiting.record(pending - running)
        metrics.kvSlotsUsed.record(running)
    }

    /// Sequences queued or running.
    var pending: Int {
        cond.lock()
        defer { cond.unlock() }
        return tracked.count
    }

    var isDraining: Bool {
        cond.lock()
        defer { cond.unlock() }
        return draining
    }

    /// Refuses new requests (503) from now on; running ones go on.
    func beginDrain() {
        cond.lock()
        draining = true
        cond.unlock()
    }

    /// Cancels everything still pending (the drain's time is up).
    func cancelAll() {
        cond.lock()
        let ids = Array(tracked.keys)
        cond.unlock()
        cancel(ids)
    }

    /// Ends the stepping thread once nothing is pending; waits for it.
    func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while thread != nil && !done { cond.wait() }
        cond.unlock()
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}

/// The logits row of a choice's current token (copied in `onLogits`, read
/// in `onToken`, both on the stepping thread, one after the other).
final class LogprobBox: @unchecked Sendable {
    let count: Int?
    private var row: [Float] = []
    private var logSumExp: Float = 0

    init(count: Int?) { self.count = count }

    func take(_ logits: UnsafeBufferPointer<Float>) {
        row.removeAll(keepingCapacity: true)
        row.append(contentsOf: logits)
        var mx = -Float.infinity
        for v in row where v > mx { mx = v }
        var sum = 0.0
        for v in row { sum += Foundation.exp(Double(v - mx)) }
        logSumExp = mx + Float(Foundation.log(sum))
    }

    func logprobs(of token: TokenID) -> TokenLogprobs? {
        guard let count, !row.isEmpty, Int(token) < row.count, token >= 0 else { return nil }
        var top: [TokenLogprobs.Candidate] = []
        if count > 0 {
            // A partial selection: keep the `count` largest (ties: lower id first).
            for (i, v) in row.enumerated() {
                if top.count < count || v > top[top.count - 1].logprob {
                    let c = TokenLogprobs.Candidate(token: TokenID(i), logprob: v)
                    let at = top.firstIndex { $0.logprob < v } ?? top.count
                    top.insert(c, at: at)
                    if top.count > count { top.removeLast() }
                }
            }
            for i in top.indices { top[i].logprob -= logSumExp }
        }
        return TokenLogprobs(logprob: row[Int(token)] - logSumExp, top: top)
    }
}
