import Foundation
import LoRA
import Testing

/// transformers' eager attention in float32 vs ours in float32: differences
/// come from summation order only; 1e-4 absolute is the bound.
let logitsTolerance: Float = 1e-4

@Suite struct ModelTests {
    @Test(arguments: ["gpt2-a", "gpt2-a-f16", "gpt2-a-bf16", "gpt2-b"])
    func logitsMatchTransformers(name: String) throws {
        let model = try Model.load(directory: Fixtures.path(name))
        let exp = try Fixtures.expected(name)
        for k in 0..<4 {
            let ids = try exp.ints("seq\(k).ids").tokenIDs
            let want = try exp.floats("seq\(k).logits")
            let got = try model.logits(ids)
            let d = maxAbsDiff(got, want)
            #expect(d < logitsTolerance, "\(name) seq\(k) (T=\(ids.count)): max |Δ| = \(d)")
        }
    }

    @Test(arguments: ["gpt2-a", "gpt2-b"])
    func paddedBatchesMatchTransformers(name: String) throws {
        let model = try Model.load(directory: Fixtures.path(name))
        let exp = try Fixtures.expected(name)
        for side in ["left", "right"] {
            let ids = try exp.ints("batch_\(side).ids")
            let mask = try exp.ints("batch_\(side).mask")
            let shape = exp["batch_\(side).ids"]!.shape
            let (B, T) = (shape[0], shape[1])
            var seqs: [[TokenID]] = []
            for b in 0..<B {
                seqs.append((0..<T).filter { mask[b * T + $0] != 0 }.map { TokenID(ids[b * T + $0]) })
            }
            let got = try model.logits(batch: seqs, padding: side == "left" ? .left : .right)
            let d = maxAbsDiff(got, try exp.floats("batch_\(side).logits"))
            #expect(d < logitsTolerance, "\(name) \(side) padding: max |Δ| = \(d)")
        }
    }

    @Test(arguments: ["gpt2-a", "gpt2-b"])
    func greedyGenerationMatchesTransformers(name: String) throws {
        let model = try Model.load(directory: Fixtures.path(name))
        let (requests, wants) = try Fixtures.greedyRequests(Fixtures.expected(name))
        for (q, want) in zip(requests, wants) {
            var streamed: [TokenID] = []
            let r = try model.generate(prompt: q.prompt, params: q.params) { id, _ in
                streamed.append(id); return .continue
            }
            #expect(q.prompt + r.tokens == want)
            #expect(streamed == r.tokens)
            #expect(r.stopReason == .maxNewTokens)
        }
    }

    @Test func kvCacheMatchesFullForward() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-b"))
        let ids: [TokenID] = [3, 17, 42, 8, 8, 61, 0, 79, 12]
        let full = try model.logits(ids)
        let session = try InferenceSession(model: model, batch: 1, capacity: ids.count)
        var inc: [Float] = try session.forward(Array(ids[0..<4]), batch: 1, lastOnly: false)
        for t in 4..<ids.count { inc += try session.forward([ids[t]], batch: 1, lastOnly: false) }
        #expect(maxAbsDiff(full, inc) < 1e-5)
        // model.logits runs without a cache (keys and values straight from the
        // projections); a cached session gives the same logits.
        let cached = try InferenceSession(model: model, batch: 1, capacity: ids.count)
        #expect(maxAbsDiff(full, try cached.forward(ids, batch: 1, lastOnly: false)) < 1e-6)
        // A session without a cache runs one call only.
        let once = try InferenceSession(model: model, batch: 1, capacity: ids.count, keepsCache: false)
        _ = try once.forward(Array(ids[0..<4]), batch: 1, lastOnly: true)
        #expect(throws: LoRAError.self) { try once.forward([ids[4]], batch: 1, lastOnly: true) }
        // A buffer of the wrong size is refused before anything is computed.
        var small = [Float](repeating: 0, count: 3)
        #expect(throws: LoRAError.self) { try small.withUnsafeMutableBufferPointer { try model.logits(ids, into: $0) } }
    }

    @Test func samplingIsSeededAndStopsAtLimits() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        var p = SamplingParams()
        p.temperature = 0.9; p.topK = 20; p.topP = 0.9; p.repetitionPenalty = 1.3
        p.maxNewTokens = 10; p.seed = 42; p.stopAtEndOfText = false
        let a = try model.generate(prompt: [1, 2, 3], params: p)
        let b = try model.generate(prompt: [1, 2, 3], params: p)
        #expect(a.tokens == b.tokens)
        #expect(a.tokens.count == 10)
        p.seed = 43
        var differs = false
        for s in 43..<53 { p.seed = UInt64(s); if try model.generate(prompt: [1, 2, 3], params: p).tokens != a.tokens { differs = true } }
        #expect(differs)
        // top_k = 1 is greedy.
        p.topK = 1; p.repetitionPenalty = 1
        var g = SamplingParams.greedy; g.maxNewTokens = 10; g.stopAtEndOfText = false
        #expect(try model.generate(prompt: [1, 2, 3], params: p).tokens == model.generate(prompt: [1, 2, 3], params: g).tokens)
        // Never past n_positions (32).
        g.maxNewTokens = 100
        let long = try model.generate(prompt: Array(repeating: 5, count: 30), params: g)
        #expect(long.tokens.count == 2)
        #expect(long.stopReason == .contextFull)
        // The callback can stop.
        let stopped = try model.generate(prompt: [1], params: g) { _, _ in .stop }
        #expect(stopped.tokens.count == 1 && stopped.stopReason == .callback)
    }

    @Test func badInputsThrow() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        #expect(throws: LoRAError.self) { try model.logits([0, 101]) }
        #expect(throws: LoRAError.self) { try model.logits([-1]) }
        #expect(throws: LoRAError.self) { try model.logits([]) }
        #expect(throws: LoRAError.self) { try model.logits(Array(repeating: 1, count: 33)) }
        #expect(throws: LoRAError.self) { try model.generate(prompt: Array(repeating: 1, count: 32)) }
        var p = SamplingParams(); p.topP = 0
        #expect(throws: LoRAError.self) { try model.generate(prompt: [1], params: p) }
        p = SamplingParams(); p.temperature = .nan
        #expect(throws: LoRAError.self) { try model.generate(prompt: [1], params: p) }
    }

    @Test func parameterCountMatchesGPT2Small() throws {
        // 124,439,808 for gpt2 (transformers' count).
        #expect(GPT2Config().parameterCount == 124_439_808)
        #expect(GPT2Layout(config: GPT2Config()).totalCount == 124_439_808)
    }
}

@Suite struct TextModelTests {
    @Test func textToLogitsMatchesTransformers() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-tok"))
        let exp = try Fixtures.expected("gpt2-tok")
        let text = try #require(exp.metadata?["text"])
        let ids = try #require(model.tokenizer).encode(text)
        #expect(ids == (try exp.ints("ids")).tokenIDs)
        #expect(maxAbsDiff(try model.logits(ids), try exp.floats("logits")) < logitsTolerance)
        var p = SamplingParams(); p.maxNewTokens = 8; p.seed = 1; p.stopAtEndOfText = false
        var streamed = ""
        let r = try model.generate("Hello", params: p) { _, piece in
            streamed += piece; return .continue
        }
        #expect(r.tokens.count == 8)
        #expect(streamed == r.text)
        #expect(try model.tokenizer!.decode(r.tokens) == r.text)
        // Ending inside a multi-byte character: the last piece carries the held-back bytes.
        for seed in [94, 129, 144] as [UInt64] {
            var q = SamplingParams(); q.maxNewTokens = 3; q.seed = seed; q.stopAtEndOfText = false
            var pieces = ""
            let g = try model.generate("日本", params: q) { _, piece in
                pieces += piece; return .continue
            }
            #expect(pieces == g.text, "seed \(seed)")
        }
    }
}
