import Foundation
import HTTPTypes
import Hummingbird
import LoRA

/// The server's caps on one request (command-line options of `lora serve`).
public struct ServerLimits: Sendable {
    /// Request body bytes.
    public var maxBodyBytes = 1 << 20
    /// Prompt tokens of one prompt (0: the engine's context minus one).
    public var maxPromptTokens = 0
    /// `max_tokens` (0: the engine's context minus one).
    public var maxTokens = 0
    /// `n` (choices per prompt).
    public var maxN = 8
    /// Prompts in one request (a list of prompts).
    public var maxPrompts = 16
    /// Sequences waiting for a slot beyond the running ones; more is a 429.
    public var maxQueued = 64

    public init() {}
}

/// A parsed and validated `POST /v1/completions` body.
struct CompletionRequest {
    var model: String
    var prompts: [[TokenID]]
    var n = 1
    var echo = false
    var stream = false
    var includeUsage = false
    var logprobs: Int?
    var stops: [String] = []
    var params = SamplingParams()
    var adapters: [(name: String, scale: Float)] = []

    /// OpenAI's default `max_tokens` for completions.
    static let defaultMaxTokens = 16
    /// Top log-probabilities per token at most (vLLM's default cap).
    static let maxLogprobs = 20
    /// Stop strings at most (OpenAI allows 4).
    static let maxStops = 4

    /// Reads the body; every failure names the field (`param`) and the rule.
    static func parse(_ body: ByteBuffer, model: Model, context: Int, limits: ServerLimits) throws(APIError) -> CompletionRequest {
        let o = try JSONBody.object(body)
        guard let tokenizer = model.tokenizer else {
            throw APIError(.internalServerError, "the model has no tokenizer", type: "server_error")
        }
        var r = CompletionRequest(model: try o.string("model", required: true) ?? "", prompts: [])
        let maxPrompt = limits.maxPromptTokens > 0 ? min(limits.maxPromptTokens, context - 1) : context - 1
        let maxTokensCap = limits.maxTokens > 0 ? min(limits.maxTokens, context - 1) : context - 1

        // prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids.
        guard let p = o.value("prompt") else { throw .invalid("prompt", "`prompt` is required") }
        func tokens(_ list: [JSONValue], param: String) throws(APIError) -> [TokenID] {
            var ids: [TokenID] = []
            for v in list {
                guard let i = v.intValue, let t = TokenID(exactly: i), t >= 0, Int(t) < model.config.vocabSize else {
                    throw .invalid(param, "token ids must be integers in 0..<\(model.config.vocabSize)")
                }
                ids.append(t)
            }
            return ids
        }
        if let s = p.stringValue {
            r.prompts = [tokenizer.encode(s)]
        } else if let list = p.arrayValue, !list.isEmpty {
            if list.allSatisfy({ $0.stringValue != nil }) {
                r.prompts = list.map { tokenizer.encode($0.stringValue ?? "") }
            } else if list.allSatisfy({ $0.arrayValue != nil }) {
                for (i, v) in list.enumerated() { r.prompts.append(try tokens(v.arrayValue ?? [], param: "prompt[\(i)]")) }
            } else if list.allSatisfy({ $0.intValue != nil || $0.doubleValue != nil }) {
                r.prompts = [try tokens(list, param: "prompt")]
            } else {
                throw .invalid("prompt", "`prompt` must be a string, a list of strings, a list of token ids or a list of such lists")
            }
        } else {
            throw .invalid("prompt", "`prompt` must be a non-empty string, a list of strings, a list of token ids or a list of such lists")
        }
        guard r.prompts.count <= limits.maxPrompts else {
            throw .invalid("prompt", "at most \(limits.maxPrompts) prompts per request (got \(r.prompts.count))")
        }
        for (i, ids) in r.prompts.enumerated() {
            let param = r.prompts.count > 1 ? "prompt[\(i)]" : "prompt"
            guard !ids.isEmpty else { throw .invalid(param, "the prompt must not be empty") }
            guard ids.count <= maxPrompt else {
                throw .invalid(param, "the prompt has \(ids.count) tokens; at most \(maxPrompt) are allowed")
            }
        }

        var sp = SamplingParams()
        sp.maxNewTokens = try o.int("max_tokens", in: 1...maxTokensCap) ?? min(defaultMaxTokens, maxTokensCap)
        sp.temperature = try o.float("temperature", in: 0...2) ?? 1
        sp.topP = try o.float("top_p", in: 0...1) ?? 1
        guard sp.topP > 0 else { throw .invalid("top_p", "`top_p` must be greater than 0") }
        // vLLM's extension: -1 (or 0) keeps every token.
        let topK = try o.int("top_k", in: -1...Int(Int32.max)) ?? 0
        sp.topK = max(0, topK)
        sp.repetitionPenalty = try o.float("repetition_penalty", in: 0.01...100) ?? 1
        if let seed = try o.int("seed", in: Int.min...Int.max) {
            sp.seed = UInt64(bitPattern: Int64(seed))
        } else {
            sp.seed = UInt64.random(in: 0...UInt64.max)
        }
        if try o.bool("ignore_eos") == true { sp.stopAtEndOfText = false }
        for name in ["presence_penalty", "frequency_penalty"] {
            if let v = try o.float(name, in: -2...2), v != 0 {
                throw .invalid(name, "`\(name)` is not supported (only 0); use `repetition_penalty`")
            }
        }
        if let s = o.value("suffix"), !s.isNull { throw .invalid("suffix", "`suffix` is not supported (GPT-2 has no infilling)") }
        if let b = o.value("logit_bias"), !b.isNull {
            guard let obj = b.objectValue, obj.count == 0 else { throw .invalid("logit_bias", "`logit_bias` is not supported") }
        }

        r.n = try o.int("n", in: 1...limits.maxN) ?? 1
        if let best = try o.int("best_of", in: 1...limits.maxN), best != r.n {
            throw .invalid("best_of", "`best_of` is not supported other than equal to `n`")
        }
        r.echo = try o.bool("echo") ?? false
        r.stream = try o.bool("stream") ?? false
        if let so = o.value("stream_options"), !so.isNull {
            guard let obj = so.objectValue else { throw .invalid("stream_options", "`stream_options` must be an object") }
            if let u = obj["include_usage"], !u.isNull {
                guard let b = u.boolValue else { throw .invalid("stream_options.include_usage", "`include_usage` must be true or false") }
                r.includeUsage = b
            }
        }
        r.logprobs = try o.int("logprobs", in: 0...maxLogprobs)
        if r.echo, r.logprobs != nil {
            throw .invalid("logprobs", "`logprobs` with `echo` (the prompt's log-probabilities) is not supported")
        }
        if let s = o.value("stop"), !s.isNull {
            if let one = s.stringValue {
                r.stops = [one]
            } else if let list = s.arrayValue, list.allSatisfy({ $0.stringValue != nil }) {
                r.stops = list.compactMap(\.stringValue)
            } else {
                throw .invalid("stop", "`stop` must be a string or a list of strings")
            }
            guard r.stops.count <= maxStops else { throw .invalid("stop", "at most \(maxStops) stop strings") }
            r.stops = r.stops.filter { !$0.isEmpty }
        }
        sp.stopStrings = r.stops
        r.params = sp

        if let a = o.value("adapters"), !a.isNull {
            guard let list = a.arrayValue else { throw .invalid("adapters", "`adapters` must be a list of {\"name\", \"scale\"}") }
            guard list.count <= 16 else { throw .invalid("adapters", "at most 16 adapters per request") }
            for (i, item) in list.enumerated() {
                guard let obj = item.objectValue else {
                    throw .invalid("adapters[\(i)]", "each adapter must be an object {\"name\": ..., \"scale\": ...}")
                }
                let entry = JSONBody(obj)
                let name = try entry.string("name", required: true, param: "adapters[\(i)].name") ?? ""
                let scale = try entry.float("scale", in: -100...100, param: "adapters[\(i)].scale") ?? 1
                r.adapters.append((name, scale))
            }
        }
        // vLLM's rule: prompt and new tokens must fit the context.
        for (i, ids) in r.prompts.enumerated() where ids.count + sp.maxNewTokens > context {
            throw .invalid(
                r.prompts.count > 1 ? "prompt[\(i)]" : "max_tokens",
                "this model's context is \(context) tokens; the prompt (\(ids.count) tokens) and max_tokens (\(sp.maxNewTokens)) exceed it"
            )
        }
        return r
    }
}

/// Typed access to a JSON request body's fields; a null field counts as absent.
struct JSONBody {
    let object: JSONObject

    init(_ object: JSONObject) { self.object = object }

    static func object(_ body: ByteBuffer) throws(APIError) -> JSONBody {
        let v: JSONValue
        do { v = try JSON.parse(body.readableBytesView) } catch {
            throw APIError(.badRequest, "the body is not valid JSON: \(error)", code: "invalid_json")
        }
        guard let o = v.objectValue else {
            throw APIError(.badRequest, "the body must be a JSON object, not \(v.kindName)", code: "invalid_json")
        }
        return JSONBody(o)
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func string(_ key: String, required: Bool = false, param: String? = nil) throws(APIError) -> String? {
        guard let v = value(key) else {
            if required { throw .invalid(param ?? key, "`\(param ?? key)` is required") }
            return nil
        }
        guard let s = v.stringValue else { throw .invalid(param ?? key, "`\(param ?? key)` must be a string, not \(v.kindName)") }
        return s
    }

    func int(_ key: String, in range: ClosedRange<Int>, param: String? = nil) throws(APIError) -> Int? {
        guard let v = value(key) else { return nil }
        let name = param ?? key
        guard let i = v.intValue else { throw .invalid(name, "`\(name)` must be an integer, not \(v.kindName)") }
        guard range.contains(i) else { throw .invalid(name, "`\(name)` must be in \(range.lowerBound)...\(range.upperBound) (got \(i))") }
        return i
    }

    func float(_ key: String, in range: ClosedRange<Double>, param: String? = nil) throws(APIError) -> Float? {
        guard let v = value(key) else { return nil }
        let name = param ?? key
        guard let d = v.doubleValue, d.isFinite else { throw .invalid(name, "`\(name)` must be a finite number, not \(v.kindName)") }
        guard range.contains(d) else { throw .invalid(name, "`\(name)` must be in \(range.lowerBound)...\(range.upperBound) (got \(d))") }
        return Float(d)
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.boolValue else { throw .invalid(key, "`\(key)` must be true or false, not \(v.kindName)") }
        return b
    }
}
