import Foundation
import LoRA

// `lora generate --batch-file FILE`: many prompts through one batched engine.
// FILE is plain text (one prompt per line, empty lines skipped) or JSONL
// (one object per line: "prompt" and optionally "adapters" ["DIR[:SCALE]",
// ...], "max_new_tokens", "temperature", "top_k", "top_p",
// "repetition_penalty", "seed", "stop" (a string or a list), "ignore_eos").
// Lines without "adapters" use the --adapter options. The output is JSONL in
// input order: {"index", "prompt", "text", "tokens", "stop_reason"}.

struct BatchLine {
    var line: Int
    var prompt: String
    var adapters: [AdapterUse]
    var params: SamplingParams
}

enum GenerateBatch {
    static func run(
        file: String, model m: Model, defaults: SamplingParams, adapterSpecs: [String],
        maxSequences: Int, maxTokensPerStep: Int
    ) throws {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw LoRAError.io(path: file, reason: "cannot read the batch file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw LoRAError.invalidFile(path: file, reason: "not valid UTF-8")
        }
        var cache: [String: Adapter] = [:]
        func uses(_ specs: [String], line: Int) throws -> [AdapterUse] {
            try specs.map { spec in
                let (dir, scale) = try AdapterSpec.parse(spec)
                if cache[dir] == nil {
                    do { cache[dir] = try Adapter.load(directory: dir, modelConfig: m.config, name: dir) } catch {
                        throw LoRAError.invalidFile(path: file, reason: "line \(line): adapter \(dir): \(error)")
                    }
                }
                return AdapterUse(cache[dir]!, scale: scale)
            }
        }
        let defaultAdapters = try uses(adapterSpecs, line: 0)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map {
            $0.hasSuffix("\r") ? String($0.dropLast()) : String($0)
        }
        let jsonl =
            file.hasSuffix(".jsonl")
            || lines.first(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty })?
                .trimmingCharacters(in: .whitespaces).hasPrefix("{") == true
        var items: [BatchLine] = []
        for (i, raw) in lines.enumerated() {
            let n = i + 1
            if raw.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            guard jsonl else {
                items.append(BatchLine(line: n, prompt: raw, adapters: defaultAdapters, params: defaults))
                continue
            }
            func bad(_ m: String) -> LoRAError { .invalidFile(path: file, reason: "line \(n): \(m)") }
            let v: JSONValue
            do { v = try JSON.parse(raw) } catch { throw bad("\(error)") }
            guard let o = v.objectValue else { throw bad("expected a JSON object, got \(v.kindName)") }
            guard let prompt = o["prompt"]?.stringValue, !prompt.isEmpty else { throw bad("\"prompt\" must be a non-empty string") }
            var p = defaults
            func int(_ k: String) throws -> Int? {
                guard let x = o[k] else { return nil }
                guard let i = x.intValue else { throw bad("\"\(k)\" must be an integer, not \(x.kindName)") }
                return i
            }
            func real(_ k: String) throws -> Float? {
                guard let x = o[k] else { return nil }
                guard let d = x.doubleValue else { throw bad("\"\(k)\" must be a number, not \(x.kindName)") }
                return Float(d)
            }
            if let x = try int("max_new_tokens") { p.maxNewTokens = x }
            if let x = try real("temperature") { p.temperature = x }
            if let x = try int("top_k") { p.topK = x }
            if let x = try real("top_p") { p.topP = x }
            if let x = try real("repetition_penalty") { p.repetitionPenalty = x }
            if let x = try int("seed") {
                guard let s = UInt64(exactly: x) else { throw bad("\"seed\" must be >= 0") }
                p.seed = s
            }
            if let s = o["stop"] {
                let list = s.stringValue.map { [JSONValue.string($0)] } ?? s.arrayValue ?? []
                let strings = list.compactMap(\.stringValue)
                guard !list.isEmpty || s.arrayValue != nil, strings.count == list.count else {
                    throw bad("\"stop\" must be a string or a list of strings")
                }
                p.stopStrings = strings
            }
            if let x = o["ignore_eos"] {
                guard let b = x.boolValue else { throw bad("\"ignore_eos\" must be true or false") }
                p.stopAtEndOfText = !b
            }
            do { try p.validate() } catch { throw bad("\(error)") }
            var adapters = defaultAdapters
            if let a = o["adapters"] {
                guard let list = a.arrayValue, list.allSatisfy({ $0.stringValue != nil }) else {
                    throw bad("\"adapters\" must be a list of \"DIR[:SCALE]\" strings")
                }
                adapters = try uses(list.compactMap(\.stringValue), line: n)
            }
            items.append(BatchLine(line: n, prompt: prompt, adapters: adapters, params: p))
        }
        guard !items.isEmpty else { throw LoRAError.invalidFile(path: file, reason: "no prompt in the file") }

        var ep = EngineParams()
        ep.maxSequences = maxSequences
        ep.maxTokensPerStep = max(maxTokensPerStep, maxSequences)
        let engine = try Engine(model: m, params: ep)
        guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("the model has no tokenizer") }
        var ids: [Int64] = []
        for it in items {
            do {
                ids.append(try engine.submit(EngineRequest(prompt: tok.encode(it.prompt), adapters: it.adapters, params: it.params)))
            } catch {
                throw LoRAError.invalidFile(path: file, reason: "line \(it.line): \(error)")
            }
        }
        // Results leave in input order as soon as every earlier one is done.
        var next = 0
        var failed = 0
        func flush() throws {
            while next < ids.count, case let info = try engine.state(ids[next]), let r = info.result {
                var fields: [(String, JSONValue)] = [
                    ("index", .number(JSONNumber(next))), ("line", .number(JSONNumber(items[next].line))),
                    ("prompt", .string(items[next].prompt)), ("text", .string(r.text)),
                    ("tokens", .number(JSONNumber(r.tokens.count))), ("stop_reason", .string(r.stopReason.rawValue)),
                ]
                if let e = info.error {
                    fields.append(("error", .string("\(e)")))
                    failed += 1
                }
                say(JSON.compact(.object(JSONObject(fields))))
                try engine.release(ids[next])
                next += 1
            }
        }
        while engine.pendingCount > 0 {
            // A prompt whose sampled token has no text fails alone (its line
            // says so: stop_reason "error"); the others go on.
            let r = try engine.step()
            if !r.finished.isEmpty { try flush() }
        }
        try flush()
        if failed > 0 {
            throw LoRAError.invalidArgument("\(failed) of \(ids.count) prompts failed (their lines have an \"error\")")
        }
    }
}
