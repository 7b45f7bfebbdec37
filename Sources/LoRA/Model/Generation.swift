import Foundation

/// How to pick tokens. The processors run in transformers' order:
/// repetition penalty, temperature, top-k, top-p, then sampling.
public struct SamplingParams: Sendable, Equatable {
    public var maxNewTokens = 64
    /// 0 means greedy (argmax).
    public var temperature: Float = 1.0
    /// 0 disables top-k.
    public var topK = 0
    /// 1 disables top-p (nucleus) filtering.
    public var topP: Float = 1.0
    /// 1 disables the penalty (transformers' RepetitionPenaltyLogitsProcessor).
    public var repetitionPenalty: Float = 1.0
    public var seed: UInt64 = 0
    /// Stop when the model emits `<|endoftext|>` (the config's eos id). The
    /// token is returned in `tokens` but its text is not added to `text`.
    public var stopAtEndOfText = true
    /// Stop once the generated text contains one of these (it is kept, as transformers does).
    public var stopStrings: [String] = []

    public init() {}

    public static var greedy: SamplingParams { var p = SamplingParams(); p.temperature = 0; return p }

    public func validate() throws {
        guard maxNewTokens >= 0 else { throw LoRAError.invalidArgument("max_new_tokens must be >= 0") }
        guard temperature.isFinite, temperature >= 0 else { throw LoRAError.invalidArgument("temperature must be a finite number >= 0") }
        guard topK >= 0 else { throw LoRAError.invalidArgument("top_k must be >= 0") }
        guard topP.isFinite, topP > 0, topP <= 1 else { throw LoRAError.invalidArgument("top_p must be in (0, 1]") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0 else {
            throw LoRAError.invalidArgument("repetition_penalty must be a finite number > 0")
        }
    }
}

public enum StopReason: String, Sendable {
    case maxNewTokens = "max_new_tokens"
    case endOfText = "end_of_text"
    case stopString = "stop_string"
    /// The sequence reached n_positions (generation is truncated there).
    case contextFull = "context_full"
    /// The token callback asked to stop.
    case callback
    /// The request failed: in the batched engine, a sampled token the
    /// tokenizer has no text for (a model vocabulary larger than the
    /// tokenizer's); `RequestInfo.error` holds the error.
    case error
}

public struct GenerationResult: Sendable {
    /// The new tokens (not the prompt).
    public var tokens: [TokenID]
    /// The new tokens decoded (empty without a tokenizer).
    public var text: String
    public var stopReason: StopReason
}

extension Model {
    /// Generates after `prompt` with a KV cache. `onToken(id, textPiece)` is
    /// called on the calling thread for each new token; return `.stop` to stop.
    /// The prompt must be shorter than n_positions; generation stops at
    /// n_positions (`.contextFull`).
    public func generate(
        prompt: [TokenID], params: SamplingParams = SamplingParams(),
        onToken: ((TokenID, String) -> CallbackAction)? = nil
    ) throws -> GenerationResult {
        try params.validate()
        guard !prompt.isEmpty else { throw LoRAError.invalidArgument("empty prompt") }
        guard prompt.count < config.nPositions else {
            throw LoRAError.invalidArgument(
                "prompt of \(prompt.count) tokens does not fit n_positions (\(config.nPositions)) with room for a new token")
        }
        try prompt.withUnsafeBufferPointer { try checkTokens($0) }
        let total = prompt.count + min(config.nPositions - prompt.count, params.maxNewTokens)  // no overflow for huge max_new_tokens
        let session = try InferenceSession(model: self, batch: 1, capacity: max(total, prompt.count))
        if params.maxNewTokens == 0 { return GenerationResult(tokens: [], text: "", stopReason: .maxNewTokens) }
        var state = GenerationState(model: self, prompt: prompt, params: params, limit: config.nPositions)
        var logits = try session.forward(prompt, batch: 1, lastOnly: true)
        while true {
            let next = state.pick(&logits)
            let taken = try state.append(next)
            var stop = taken.stop
            if let onToken, onToken(next, taken.piece) == .stop { stop = .callback }
            if let stop { return state.result(stop) }
            logits = try session.forward([next], batch: 1, lastOnly: true)
        }
    }

    /// Generates from a text prompt (needs a tokenizer).
    public func generate(
        _ prompt: String, params: SamplingParams = SamplingParams(),
        onToken: ((TokenID, String) -> CallbackAction)? = nil
    ) throws -> GenerationResult {
        guard let tokenizer else { throw LoRAError.invalidArgument("the model has no tokenizer") }
        return try generate(prompt: tokenizer.encode(prompt), params: params, onToken: onToken)
    }
}

/// One sequence's generation after its prompt: the sampler's history and
/// generator, the streamed text and the stop rules. `Model.generate` and the
/// batched `Engine` both run it, so a sequence gives the same tokens, text and
/// stop reason either way.
struct GenerationState {
    let params: SamplingParams
    let eos: TokenID?
    /// Positions the sequence may fill (n_positions, or the engine's context).
    let limit: Int
    var rng: SplitMix64
    var decoder: StreamingDecoder?
    /// Prompt and new tokens (the repetition penalty's history).
    var sequence: [TokenID]
    var newTokens: [TokenID] = []
    var text = ""
    /// The sampler's buffers, kept for the sequence's next token.
    var sampler = SamplerScratch()

    init(model: Model, prompt: [TokenID], params: SamplingParams, limit: Int) {
        self.params = params
        eos = model.config.eosTokenID.flatMap { TokenID(exactly: $0) } ?? model.tokenizer?.endOfTextID
        self.limit = limit
        rng = SplitMix64(seed: params.seed)
        decoder = model.tokenizer.map { StreamingDecoder(tokenizer: $0) }
        sequence = prompt
        sequence.reserveCapacity(limit)
        newTokens.reserveCapacity(min(params.maxNewTokens, limit))
    }

    /// Picks the next token from this sequence's logits row (changed in place).
    mutating func pick(_ logits: inout [Float]) -> TokenID {
        Sampler.pick(logits: &logits, history: sequence, params: params, rng: &rng, scratch: &sampler)
    }

    /// Takes a picked token: returns its text piece and why the sequence ends
    /// here, if it does.
    mutating func append(_ next: TokenID) throws -> (piece: String, stop: StopReason?) {
        sequence.append(next)
        newTokens.append(next)
        var stop: StopReason? = nil
        if params.stopAtEndOfText, let eos, next == eos { stop = .endOfText }
        // The end-of-text token ends the text; its own text ("<|endoftext|>") is not part of it.
        var piece = ""
        do { piece = stop == .endOfText ? "" : (try decoder?.push(next) ?? "") } catch {
            // A token without text: the text keeps the bytes held back for an incomplete character.
            if var d = decoder {
                text += d.finish()
                decoder = d
            }
            throw error
        }
        text += piece
        if stop != nil {
        } else if !params.stopStrings.isEmpty, params.stopStrings.contains(where: { !$0.isEmpty && text.contains($0) }) {
            stop = .stopString
        } else if newTokens.count >= params.maxNewTokens {
            stop = .maxNewTokens
        } else if sequence.count >= limit {
            stop = .contextFull
        }
        if stop != nil, var d = decoder {
            // The last piece carries any bytes held back for an incomplete character.
            let tail = d.finish()
            decoder = d
            piece += tail
            text += tail
        }
        return (piece, stop)
    }

    func result(_ reason: StopReason) -> GenerationResult {
        GenerationResult(tokens: newTokens, text: text, stopReason: reason)
    }
}

/// The sampler's buffers for one sequence, reused from token to token (no
/// allocation per token once they have grown to the vocabulary).
struct SamplerScratch {
    var idx: [Int] = []
    var probs: [Double] = []
    var seen = Set<TokenID>()
}

/// Token selection over one row of logits.
enum Sampler {
    /// The next token: greedy at temperature 0; otherwise the candidates in
    /// order of logit (descending, ties by index), the top_k first of them,
    /// softmax at the temperature, the top_p prefix, one draw.
    static func pick(
        logits: inout [Float], history: [TokenID], params: SamplingParams, rng: inout SplitMix64,
        scratch: inout SamplerScratch
    ) -> TokenID {
        let V = logits.count
        if params.repetitionPenalty != 1 {
            scratch.seen.removeAll(keepingCapacity: true)
            for t in history where scratch.seen.insert(t).inserted && Int(t) < V {
                let v = logits[Int(t)]
                logits[Int(t)] = v < 0 ? v * params.repetitionPenalty : v / params.repetitionPenalty
            }
        }
        if params.temperature == 0 {
            var best = 0
            for i in 1..<V where logits[i] > logits[best] { best = i }
            return TokenID(best)
        }
        let inv = 1 / params.temperature
        for i in 0..<V { logits[i] *= inv }
        var keep = V
        if params.topK > 0 { keep = min(keep, params.topK) }
        // The first `keep` candidates in order: with a top_k below the
        // vocabulary, a heap of the best k in one pass and a sort of those
        // (the same candidates in the same order as sorting all V, at
        // O(V log k) instead of O(V log V)).
        logits.withUnsafeBufferPointer { l in
            func before(_ a: Int, _ b: Int) -> Bool { l[a] != l[b] ? l[a] > l[b] : a < b }
            scratch.idx.removeAll(keepingCapacity: true)
            if keep < V {
                // Min-heap under `before`: the root is the worst kept candidate.
                scratch.idx.append(contentsOf: 0..<keep)
                scratch.idx.withUnsafeMutableBufferPointer { h in
                    func siftDown(_ start: Int) {
                        var i = start
                        while true {
                            let l2 = 2 * i + 1
                            if l2 >= keep { return }
                            var worst = l2
                            if l2 + 1 < keep, before(h[worst], h[l2 + 1]) { worst = l2 + 1 }
                            if before(h[worst], h[i]) { return }
                            h.swapAt(i, worst)
                            i = worst
                        }
                    }
                    for i in stride(from: keep / 2 - 1, through: 0, by: -1) { siftDown(i) }
                    for c in keep..<V where before(c, h[0]) {
                        h[0] = c
                        siftDown(0)
                    }
                }
            } else {
                scratch.idx.append(contentsOf: 0..<V)
            }
            scratch.idx.sort(by: before)
        }
        let idx = scratch.idx
        let mx = logits[idx[0]]
        if scratch.probs.count < keep { scratch.probs = [Double](repeating: 0, count: keep) }
        var sum = 0.0
        for j in 0..<keep {
            let p = Foundation.exp(Double(logits[idx[j]] - mx))
            scratch.probs[j] = p
            sum += p
        }
        if params.topP < 1 {
            var cum = 0.0
            var cut = keep
            for j in 0..<keep {
                cum += scratch.probs[j] / sum
                if cum >= Double(params.topP) { cut = j + 1; break }
            }
            keep = max(1, cut)
            sum = scratch.probs[0..<keep].reduce(0, +)
        }
        var u = rng.nextDouble() * sum
        for j in 0..<keep {
            u -= scratch.probs[j]
            if u < 0 { return TokenID(idx[j]) }
        }
        return TokenID(idx[keep - 1])
    }
}
