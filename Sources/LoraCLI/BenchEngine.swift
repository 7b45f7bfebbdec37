import Foundation
import LoRA

// `lora bench engine`: the batched multi-adapter engine on GPT-2 124M shapes
// (random weights): N concurrent requests × new tokens after a prompt, greedy,
// each with its own r=8 adapter on c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
// (DoRA adapters with --use-dora),
// against one shared adapter, a single sequence, and the same requests one
// after another with attach/detach (what `lora generate` does today); and the
// time to first token of requests that join a busy engine.

extension Bench {
    func engineBench() throws {
        let model = try Model.random(config: GPT2Config(), seed: 1, dtype: dtype)
        try kvCache.apply(to: model)
        let P = enginePrompt
        let N = newTokens
        guard P >= 1, N >= 2, P + N <= model.config.nPositions else {
            throw LoRAError.invalidArgument("--engine-prompt + --new-tokens must fit n_positions (1024), with --new-tokens >= 2")
        }
        let counts = try sequences.split(separator: ",").map { s -> Int in
            guard let n = Int(s.trimmingCharacters(in: .whitespaces)), n >= 1, n <= 256 else {
                throw LoRAError.invalidArgument("--sequences takes a comma-separated list of counts in 1...256")
            }
            return n
        }
        var lc = LoRAConfig()
        lc.r = 8; lc.loraAlpha = 16; lc.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
        lc.initLoraWeights = .random  // non-zero B: the products are real work either way
        lc.useDoRA = useDora
        var adapters: [Adapter] = []
        for i in 0..<(counts.max() ?? 1) {
            let a = try Adapter(config: lc, modelConfig: model.config, name: "a\(i)")
            try a.initialize(from: model, seed: UInt64(100 + i))
            adapters.append(a)
        }
        var rng = SplitMix64(seed: 3)
        let prompts = (0..<(counts.max() ?? 1)).map { _ in (0..<P).map { _ in TokenID(rng.next() % 50257) } }
        var greedy = SamplingParams.greedy
        greedy.maxNewTokens = N
        greedy.stopAtEndOfText = false

        /// Runs n requests (adapter of request i: pick(i)) to completion: (decode tok/s over the steps after
        /// the first token of every request, end-to-end tok/s from submit to the last token, seconds from
        /// submit until every request had its first token: the prompts' prefill).
        func batched(_ n: Int, _ pick: (Int) -> [AdapterUse]) throws -> (decode: Double, total: Double, prefill: Double) {
            var ep = EngineParams()
            ep.maxSequences = n
            ep.maxTokensPerStep = max(n, min(n * P, 4096))
            ep.contextPerSequence = P + N
            let engine = try Engine(model: model, params: ep)
            let t0 = now()
            for i in 0..<n { _ = try engine.submit(EngineRequest(prompt: prompts[i], adapters: pick(i), params: greedy)) }
            var produced = 0
            var decodeStart = 0.0
            var decodeTokens = 0
            while engine.pendingCount > 0 {
                let r = try engine.step()
                produced += r.produced.count
                if decodeStart == 0 {
                    if produced >= n { decodeStart = now() }
                } else {
                    decodeTokens += r.produced.count
                }
            }
            let t1 = now()
            return (Double(decodeTokens) / (t1 - decodeStart), Double(n * N) / (t1 - t0), decodeStart - t0)
        }

        func line(_ fields: [(String, String)]) {
            say(
                "{"
                    + ([
                        ("engine", "\"liblora\""), ("bench", "\"engine\""), ("use_dora", useDora ? "true" : "false"),
                        ("threads", "\(threads)"),
                        ("kv_cache_dtype", "\"\(kvCache.kvCacheDType.rawValue)\""),
                    ] + fields)
                    .map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}")
        }
        func f(_ x: Double) -> String { String(format: "%.1f", x) }

        // One sequence alone in the engine, with its adapter.
        let single = try batched(1) { _ in [AdapterUse(adapters[0])] }
        line([
            ("case", "\"single_sequence\""), ("sequences", "1"), ("prompt", "\(P)"), ("new_tokens", "\(N)"),
            ("decode_tokens_per_s", f(single.decode)), ("total_tokens_per_s", f(single.total)),
            ("first_tokens_s", String(format: "%.3f", single.prefill)),
        ])

        for n in counts {
            let distinct = try batched(n) { [AdapterUse(adapters[$0])] }
            let shared = try batched(n) { _ in [AdapterUse(adapters[0])] }
            line([
                ("case", "\"distinct_adapters\""), ("sequences", "\(n)"), ("prompt", "\(P)"), ("new_tokens", "\(N)"),
                ("decode_tokens_per_s", f(distinct.decode)), ("total_tokens_per_s", f(distinct.total)),
                ("first_tokens_s", String(format: "%.3f", distinct.prefill)),
                ("vs_shared", String(format: "%.3f", distinct.decode / shared.decode)),
                ("vs_single", String(format: "%.2f", distinct.decode / single.decode)),
            ])
            line([
                ("case", "\"shared_adapter\""), ("sequences", "\(n)"), ("prompt", "\(P)"), ("new_tokens", "\(N)"),
                ("decode_tokens_per_s", f(shared.decode)), ("total_tokens_per_s", f(shared.total)),
                ("first_tokens_s", String(format: "%.3f", shared.prefill)),
            ])
            guard n == counts.first else { continue }
            // Today: the same requests one after another, attach + generate + detach.
            let t0 = now()
            for i in 0..<n {
                try model.attach(adapters[i])
                _ = try model.generate(prompt: prompts[i], params: greedy)
                try model.detach(adapters[i])
            }
            let sequential = Double(n * N) / (now() - t0)
            line([
                ("case", "\"sequential_attach_detach\""), ("sequences", "\(n)"), ("prompt", "\(P)"), ("new_tokens", "\(N)"),
                ("total_tokens_per_s", f(sequential)),
                ("engine_distinct_vs_sequential", String(format: "%.2f", distinct.total / sequential)),
            ])

            // Time to first token of a request joining n−1 decoding sequences (each join a
            // fresh request, prefilled in one step beside their decode tokens).
            var ep = EngineParams()
            ep.maxSequences = n
            ep.maxTokensPerStep = max(n, P + n)
            ep.contextPerSequence = P + N
            let engine = try Engine(model: model, params: ep)
            var long = greedy
            long.maxNewTokens = N
            var busy: [Int64] = []
            for i in 0..<(n - 1) {
                busy.append(try engine.submit(EngineRequest(prompt: prompts[i], adapters: [AdapterUse(adapters[i])], params: long)))
            }
            // Until every other request is decoding (their prompts are in the cache).
            while try busy.contains(where: { try engine.state($0).tokenCount == 0 }) { _ = try engine.step() }
            var ttft: [Double] = []
            var one = greedy
            one.maxNewTokens = 1
            for j in 0..<joins {
                let t0 = now()
                var first = 0.0
                let id = try engine.submit(
                    EngineRequest(prompt: prompts[(n - 1 + j) % prompts.count], adapters: [AdapterUse(adapters[n - 1])], params: one) {
                        _, _ in
                        first = now(); return .continue
                    })
                while first == 0 {
                    if try engine.step().rows == 0 { break }
                }
                ttft.append(first - t0)
                try engine.release(id)
            }
            let s = ttft.sorted()
            func pct(_ p: Double) -> Double { s[min(s.count - 1, Int((p * Double(s.count)).rounded(.up)) - 1)] }
            line([
                ("case", "\"join_busy_engine\""), ("sequences", "\(n)"), ("prompt", "\(P)"), ("joins", "\(joins)"),
                ("ttft_p50_ms", String(format: "%.1f", 1000 * pct(0.5))), ("ttft_p99_ms", String(format: "%.1f", 1000 * pct(0.99))),
            ])
        }
    }
}
