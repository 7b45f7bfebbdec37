import Foundation
import HTTPTypes
import Hummingbird
import LoRA

/// `POST /v1/completions`: validates, submits every choice (prompts × n) to
/// the scheduler at once, and answers one JSON object or a stream of
/// server-sent events (`data: {chunk}` … `data: [DONE]`).
struct CompletionResponder: Sendable {
    let state: ServerState

    func respond(_ request: Request) async throws -> Response {
        var request = request
        let body = try await state.collectBody(&request)
        let r = try CompletionRequest.parse(body, model: state.model, context: state.context, limits: state.limits)
        // More choices than slots and queue together could ever hold: never admissible, so 400 (not 429).
        let capacity = state.scheduler.engine.params.maxSequences + state.limits.maxQueued
        guard r.prompts.count * r.n <= capacity else {
            throw APIError.invalid(
                "n", "\(r.prompts.count) prompt(s) × n = \(r.n) is more than the server's \(capacity) sequences (running and queued)")
        }
        let acquired = try state.registry.acquire(model: r.model, extra: r.adapters)
        let choices: [ChoiceRequest] = r.prompts.flatMap { prompt in
            (0..<r.n).map { j in
                var p = r.params
                p.seed = p.seed &+ UInt64(j)  // choice j of a prompt: seed + j
                return ChoiceRequest(prompt: prompt, adapters: acquired.uses, params: p, logprobs: r.logprobs)
            }
        }
        let submitted: (ids: [Int64], events: AsyncStream<CompletionEvent>)
        do { submitted = try state.scheduler.submit(choices) } catch {
            state.registry.release(acquired.names)
            throw error
        }
        let job = CompletionJob(state: state, request: r, choices: choices, ids: submitted.ids, adapterNames: acquired.names)
        if !r.stream {
            defer { job.close() }
            let events = submitted.events
            await withTaskCancellationHandler {
                for await e in events {
                    _ = job.take(e)
                    if job.finished { break }
                }
            } onCancel: {
                job.cancel()
            }
            return jsonResponse(job.completeObject())
        }
        let events = submitted.events
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
            body: ResponseBody { writer in
                defer { job.close() }
                do {
                    if r.echo {
                        for (i, c) in choices.enumerated() {
                            try await writer.write(job.sse(job.chunk(index: i, text: job.promptText(c.prompt))))
                        }
                    }
                    for await e in events {
                        for chunk in job.take(e) { try await writer.write(job.sse(chunk)) }
                        if job.finished { break }
                    }
                    if r.includeUsage { try await writer.write(job.sse(job.usageChunk())) }
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                } catch {
                    // The client went away (a write failed): its sequences stop and free their slots.
                    job.cancel()
                    throw error
                }
            })
    }
}

/// One completion request in flight: every choice's text so far, what was
/// sent, its log-probabilities and its end.
final class CompletionJob: @unchecked Sendable {
    let state: ServerState
    let request: CompletionRequest
    let choices: [ChoiceRequest]
    let ids: [Int64]
    let adapterNames: [String]
    let id = "cmpl-" + (0..<24).map { _ in String("0123456789abcdef".randomElement()!) }.joined()
    let created = Int(Date().timeIntervalSince1970)
    private var outputs: [ChoiceOutput]
    private var remaining: Int
    private var closed = false
    private let lock = NSLock()

    struct ChoiceOutput {
        var text = ""  // everything generated, stop string included
        var sent = 0  // unicode scalars of `text` already streamed
        var tokens: [TokenID] = []
        var logprobs: [TokenLogprobs] = []
        var finish: String?
        var final: String?  // the answer's text once finished (stop string cut)
    }

    init(state: ServerState, request: CompletionRequest, choices: [ChoiceRequest], ids: [Int64], adapterNames: [String]) {
        self.state = state
        self.request = request
        self.choices = choices
        self.ids = ids
        self.adapterNames = adapterNames
        outputs = Array(repeating: ChoiceOutput(), count: choices.count)
        remaining = choices.count
    }

    /// Takes an event; returns the stream chunks it makes (none unless streaming).
    func take(_ e: CompletionEvent) -> [JSONValue] {
        switch e {
        case .token(let i, let token, let piece, let lp):
            outputs[i].text += piece
            outputs[i].tokens.append(token)
            if let lp { outputs[i].logprobs.append(lp) }
            guard request.stream else { return [] }
            // Text that cannot be the start of a stop string yet.
            // (A token may complete a stop string and carry text past it: then
            // nothing is sent here; the finished event sends the cut text.)
            let hold = max(0, (request.stops.map { $0.unicodeScalars.count }.max() ?? 0) - 1)
            let scalars = outputs[i].text.unicodeScalars
            let stopped = request.stops.contains { outputs[i].text.contains($0) }
            let ready = stopped ? 0 : scalars.count - hold
            var text = ""
            if ready > outputs[i].sent {
                text = String(String.UnicodeScalarView(scalars.dropFirst(outputs[i].sent).prefix(ready - outputs[i].sent)))
                outputs[i].sent = ready
            }
            if text.isEmpty && lp == nil { return [] }
            return [chunk(index: i, text: text, logprobs: lp.map { logprobsObject([token], [$0], start: 0) })]
        case .finished(let i, let result, let cancelled):
            var text = outputs[i].text
            var finish = cancelled || result == nil ? "abort" : "length"
            switch result?.stopReason {
            case .endOfText: finish = "stop"
            case .stopString:
                finish = "stop"
                // OpenAI's rule: the stop string is not part of the text.
                let cut = request.stops.compactMap { text.range(of: $0)?.lowerBound }.min()
                if let cut { text = String(text[..<cut]) }
            case .maxNewTokens, .contextFull: finish = "length"
            case .error: finish = "abort"
            case .callback, nil: break
            }
            outputs[i].final = text
            outputs[i].finish = finish
            remaining -= 1
            var out: [JSONValue] = []
            if request.stream {
                let scalars = text.unicodeScalars
                let rest = String(String.UnicodeScalarView(scalars.dropFirst(min(outputs[i].sent, scalars.count))))
                out.append(chunk(index: i, text: rest, finish: finish))
            }
            return out
        }
    }

    var finished: Bool { remaining == 0 }

    func promptText(_ ids: [TokenID]) -> String {
        (try? state.model.tokenizer?.decode(ids)) ?? ""
    }

    func tokenText(_ t: TokenID) -> String { (try? state.model.tokenizer?.decode([t])) ?? "" }

    /// OpenAI's legacy logprobs object for `tokens`.
    func logprobsObject(_ tokens: [TokenID], _ lps: [TokenLogprobs], start: Int) -> JSONValue {
        var texts: [JSONValue] = []
        var values: [JSONValue] = []
        var tops: [JSONValue] = []
        var offsets: [JSONValue] = []
        var offset = start
        for (t, lp) in zip(tokens, lps) {
            let s = tokenText(t)
            texts.append(.string(s))
            values.append(number(lp.logprob))
            var top = JSONObject()
            for c in lp.top where top[tokenText(c.token)] == nil { top.append(tokenText(c.token), number(c.logprob)) }
            tops.append(.object(top))
            offsets.append(.number(JSONNumber(offset)))
            offset += s.unicodeScalars.count
        }
        return .object(
            JSONObject([
                ("tokens", .array(texts)), ("token_logprobs", .array(values)), ("top_logprobs", .array(tops)),
                ("text_offset", .array(offsets)),
            ]))
    }

    private func number(_ f: Float) -> JSONValue { .number(JSONNumber(Double(f.isFinite ? f : -9999))) }

    func chunk(index: Int, text: String, logprobs: JSONValue? = nil, finish: String? = nil) -> JSONValue {
        var o = JSONObject([
            ("id", .string(id)), ("object", .string("text_completion")), ("created", .number(JSONNumber(created))),
            ("model", .string(request.model)),
            (
                "choices",
                .array([
                    .object(
                        JSONObject([
                            ("index", .number(JSONNumber(index))), ("text", .string(text)), ("logprobs", logprobs ?? .null),
                            ("finish_reason", finish.map { .string($0) } ?? .null),
                        ]))
                ])
            ),
        ])
        if request.includeUsage { o.append("usage", .null) }
        return .object(o)
    }

    func usage() -> JSONValue {
        let prompt = request.prompts.reduce(0) { $0 + $1.count }
        let completion = outputs.reduce(0) { $0 + $1.tokens.count }
        return .object(
            JSONObject([
                ("prompt_tokens", .number(JSONNumber(prompt))), ("completion_tokens", .number(JSONNumber(completion))),
                ("total_tokens", .number(JSONNumber(prompt + completion))),
            ]))
    }

    func usageChunk() -> JSONValue {
        .object(
            JSONObject([
                ("id", .string(id)), ("object", .string("text_completion")), ("created", .number(JSONNumber(created))),
                ("model", .string(request.model)), ("choices", .array([])), ("usage", usage()),
            ]))
    }

    /// The non-streaming answer.
    func completeObject() -> JSONValue {
        var list: [JSONValue] = []
        for (i, out) in outputs.enumerated() {
            let prompt = request.echo ? promptText(choices[i].prompt) : ""
            let lp: JSONValue =
                request.logprobs != nil ? logprobsObject(out.tokens, out.logprobs, start: prompt.unicodeScalars.count) : .null
            list.append(
                .object(
                    JSONObject([
                        ("index", .number(JSONNumber(i))), ("text", .string(prompt + (out.final ?? out.text))), ("logprobs", lp),
                        ("finish_reason", .string(out.finish ?? "abort")),
                    ])))
        }
        return .object(
            JSONObject([
                ("id", .string(id)), ("object", .string("text_completion")), ("created", .number(JSONNumber(created))),
                ("model", .string(request.model)), ("choices", .array(list)), ("usage", usage()),
            ]))
    }

    func sse(_ v: JSONValue) -> ByteBuffer { ByteBuffer(string: "data: " + JSON.compact(v) + "\n\n") }

    /// Stops the choices still running (client gone, task cancelled).
    func cancel() { state.scheduler.cancel(ids) }

    /// Once: the adapters are no longer in use by this request; unfinished choices are cancelled.
    func close() {
        lock.lock()
        let first = !closed
        closed = true
        lock.unlock()
        guard first else { return }
        if remaining > 0 { cancel() }
        state.registry.release(adapterNames)
    }
}
